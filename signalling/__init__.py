"""signalling"""
