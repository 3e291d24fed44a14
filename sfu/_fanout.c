/* One publisher packet to all its subscriptions, in one crossing into C.
 *
 * Per packet and subscription the forwarder maps the sequence number and timestamp, rewrites
 * the header (SSRC, payload type, the leg's header extensions and mid), keeps the packet for
 * NACKs, queues it for the subscriber's socket and counts it.  In Python that was some 2.5 us
 * per packet and subscription, a third of the forwarding cost (docs/performance.md); here it is
 * one call per packet for all of a publication's subscriptions.
 *
 * The rules are sfu/rtp.py's: SequenceMapper and PacketHistory here are drop-in versions of
 * its classes (the same tests run on both), and the header rewrite produces the bytes that
 * ExtensionRewriter and rewrite_packet produce.  A subscription the fast path does not handle
 * (not ready, RED to convert for its leg) is handed back to Python (Subscription.send), which
 * works on the same mapper and history.
 *
 * Everything runs with the GIL held, on the event loop's thread.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define SEQ_HALF 0x8000u
#define SRTP_REPLAY_WINDOW 1024u /* sfu.rtp.SRTP_REPLAY_WINDOW */
#define ONE_BYTE_PROFILE 0xBEDEu
#define TWO_BYTE_PROFILE 0x1000u
#define ELEMENTS_MAX 64 /* header extension elements of one packet that are carried over */
#define NTP_EPOCH_OFFSET_S 2208988800ull

/* -- SequenceMapper ------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    uint32_t seq_offset, ts_offset, next_seq, next_ts;
    int32_t start_seq; /* -1: not started */
    int32_t last_seq;  /* -1: nothing mapped yet */
    uint32_t last_ts;
} Mapper;

static int mapper_init(Mapper *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"first_sequence_number", "first_timestamp", NULL};
    unsigned long long seq, ts;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "KK", names, &seq, &ts))
        return -1;
    self->seq_offset = self->ts_offset = 0;
    self->next_seq = (uint32_t)(seq & 0xFFFF);
    self->next_ts = (uint32_t)ts;
    self->start_seq = -1;
    self->last_seq = -1;
    self->last_ts = 0;
    return 0;
}

static void mapper_start(Mapper *m, uint32_t seq, uint32_t ts) {
    m->seq_offset = (m->next_seq - seq) & 0xFFFF;
    m->ts_offset = m->next_ts - ts;
    m->start_seq = (int32_t)seq;
}

/* 1: mapped into *out_seq, *out_ts; 0: not forwarded (see sfu.rtp.SequenceMapper.map). */
static int mapper_map(Mapper *m, uint32_t seq, uint32_t ts, uint32_t *out_seq, uint32_t *out_ts) {
    if (m->start_seq < 0)
        return 0;
    uint32_t start = (uint32_t)m->start_seq;
    if (start != seq && ((start - seq) & 0xFFFF) < SEQ_HALF)
        return 0; /* older than the start */
    uint32_t mapped = (seq + m->seq_offset) & 0xFFFF;
    if (m->last_seq >= 0) {
        uint32_t behind = ((uint32_t)m->last_seq - mapped) & 0xFFFF;
        if (behind >= SRTP_REPLAY_WINDOW && behind < SEQ_HALF)
            return 0; /* SRTP would refuse it */
    }
    uint32_t mapped_ts = ts + m->ts_offset;
    if (m->last_seq < 0 || ((uint32_t)m->last_seq != mapped && ((mapped - (uint32_t)m->last_seq) & 0xFFFF) < SEQ_HALF)) {
        m->last_seq = (int32_t)mapped;
        m->last_ts = mapped_ts;
    }
    *out_seq = mapped;
    *out_ts = mapped_ts;
    return 1;
}

static int parse_seq_ts(PyObject *const *args, Py_ssize_t nargs, const char *name, uint32_t *seq, uint32_t *ts) {
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes 2 arguments (sequence_number, timestamp)", name);
        return -1;
    }
    unsigned long long a = PyLong_AsUnsignedLongLongMask(args[0]);
    if (a == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    unsigned long long b = PyLong_AsUnsignedLongLongMask(args[1]);
    if (b == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *seq = (uint32_t)(a & 0xFFFF);
    *ts = (uint32_t)b;
    return 0;
}

static PyObject *mapper_start_py(Mapper *self, PyObject *const *args, Py_ssize_t nargs) {
    uint32_t seq, ts;
    if (parse_seq_ts(args, nargs, "start", &seq, &ts) < 0)
        return NULL;
    mapper_start(self, seq, ts);
    Py_RETURN_NONE;
}

static PyObject *mapper_map_py(Mapper *self, PyObject *const *args, Py_ssize_t nargs) {
    uint32_t seq, ts, out_seq, out_ts;
    if (parse_seq_ts(args, nargs, "map", &seq, &ts) < 0)
        return NULL;
    if (!mapper_map(self, seq, ts, &out_seq, &out_ts))
        Py_RETURN_NONE;
    return Py_BuildValue("(kk)", (unsigned long)out_seq, (unsigned long)out_ts);
}

static PyObject *mapper_switch_py(Mapper *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"timestamp_gap", NULL};
    PyObject *gap_object;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O", names, &gap_object))
        return NULL;
    long long gap = PyLong_AsLongLong(gap_object);
    if (gap == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return NULL;
        PyErr_Clear();
        gap = 1; /* only the low 32 bits count; an overflowing gap is an absurd clock */
    }
    if (gap < 1)
        gap = 1;
    if (self->last_seq >= 0) {
        self->next_seq = ((uint32_t)self->last_seq + 1) & 0xFFFF;
        self->next_ts = self->last_ts + (uint32_t)((unsigned long long)gap & 0xFFFFFFFFull);
    }
    self->start_seq = -1;
    Py_RETURN_NONE;
}

static PyObject *mapper_started(Mapper *self, void *closure) {
    return PyBool_FromLong(self->start_seq >= 0);
}

static PyObject *mapper_last_seq(Mapper *self, void *closure) {
    if (self->last_seq < 0)
        Py_RETURN_NONE;
    return PyLong_FromLong(self->last_seq);
}

static PyObject *mapper_last_ts(Mapper *self, void *closure) {
    if (self->last_seq < 0)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLong(self->last_ts);
}

static PyMethodDef mapper_methods[] = {
    {"start", (PyCFunction)(void (*)(void))mapper_start_py, METH_FASTCALL,
     "start(sequence_number, timestamp): make that input the next output values"},
    {"map", (PyCFunction)(void (*)(void))mapper_map_py, METH_FASTCALL,
     "map(sequence_number, timestamp) -> (sequence_number, timestamp) | None"},
    {"switch", (PyCFunction)(void (*)(void))mapper_switch_py, METH_VARARGS | METH_KEYWORDS,
     "switch(timestamp_gap): the source is about to change"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef mapper_getset[] = {
    {"started", (getter)mapper_started, NULL, "True once start() was called (since the last switch)", NULL},
    {"last_seq", (getter)mapper_last_seq, NULL, "highest output sequence number so far (None: none)", NULL},
    {"last_ts", (getter)mapper_last_ts, NULL, "output timestamp of the packet with last_seq", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject MapperType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sfu._fanout.SequenceMapper",
    .tp_basicsize = sizeof(Mapper),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "sfu.rtp.SequenceMapper in C",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)mapper_init,
    .tp_methods = mapper_methods,
    .tp_getset = mapper_getset,
};

/* -- PacketHistory -------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Py_ssize_t size;
    int32_t *seqs;
    int32_t *resent;
    PyObject **data;
} History;

static int history_init(History *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"size", NULL};
    Py_ssize_t size;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "n", names, &size))
        return -1;
    if (size < 1) {
        PyErr_SetString(PyExc_ValueError, "history size must be >= 1");
        return -1;
    }
    if (self->data != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "PacketHistory already initialised");
        return -1;
    }
    self->seqs = PyMem_Malloc((size_t)size * sizeof(int32_t));
    self->resent = PyMem_Calloc((size_t)size, sizeof(int32_t));
    self->data = PyMem_Calloc((size_t)size, sizeof(PyObject *));
    if (self->seqs == NULL || self->resent == NULL || self->data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < size; i++)
        self->seqs[i] = -1;
    self->size = size;
    return 0;
}

static int history_traverse(History *self, visitproc visit, void *arg) {
    for (Py_ssize_t i = 0; self->data != NULL && i < self->size; i++)
        Py_VISIT(self->data[i]);
    return 0;
}

static int history_clear(History *self) {
    for (Py_ssize_t i = 0; self->data != NULL && i < self->size; i++)
        Py_CLEAR(self->data[i]);
    return 0;
}

static void history_dealloc(History *self) {
    PyObject_GC_UnTrack(self);
    history_clear(self);
    PyMem_Free(self->seqs);
    PyMem_Free(self->resent);
    PyMem_Free(self->data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static inline Py_ssize_t history_slot(History *h, long long seq) {
    Py_ssize_t i = (Py_ssize_t)(seq % h->size);
    return i < 0 ? i + h->size : i;
}

static void history_put(History *h, long long seq, PyObject *packet) {
    Py_ssize_t i = history_slot(h, seq);
    h->seqs[i] = (int32_t)seq;
    h->resent[i] = 0;
    Py_INCREF(packet);
    Py_XSETREF(h->data[i], packet);
}

static int history_seq(PyObject *object, long long *seq) {
    *seq = PyLong_AsLongLong(object);
    return (*seq == -1 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *history_put_py(History *self, PyObject *const *args, Py_ssize_t nargs) {
    long long seq;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "put() takes 2 arguments (sequence_number, data)");
        return NULL;
    }
    if (history_seq(args[0], &seq) < 0)
        return NULL;
    if (!PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "data must be bytes");
        return NULL;
    }
    history_put(self, seq, args[1]);
    Py_RETURN_NONE;
}

static PyObject *history_get_py(History *self, PyObject *arg) {
    long long seq;
    if (history_seq(arg, &seq) < 0)
        return NULL;
    Py_ssize_t i = history_slot(self, seq);
    if (self->seqs[i] == seq && self->data[i] != NULL)
        return Py_NewRef(self->data[i]);
    Py_RETURN_NONE;
}

static PyObject *history_resent_py(History *self, PyObject *arg) {
    long long seq;
    if (history_seq(arg, &seq) < 0)
        return NULL;
    Py_ssize_t i = history_slot(self, seq);
    return PyLong_FromLong(self->seqs[i] == seq ? self->resent[i] : 0);
}

static PyObject *history_note_resent_py(History *self, PyObject *arg) {
    long long seq;
    if (history_seq(arg, &seq) < 0)
        return NULL;
    Py_ssize_t i = history_slot(self, seq);
    if (self->seqs[i] == seq)
        self->resent[i]++;
    Py_RETURN_NONE;
}

static PyMethodDef history_methods[] = {
    {"put", (PyCFunction)(void (*)(void))history_put_py, METH_FASTCALL, "put(sequence_number, data)"},
    {"get", (PyCFunction)history_get_py, METH_O, "get(sequence_number) -> bytes | None"},
    {"resent", (PyCFunction)history_resent_py, METH_O, "resent(sequence_number) -> times resent"},
    {"note_resent", (PyCFunction)history_note_resent_py, METH_O, "note_resent(sequence_number)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HistoryType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sfu._fanout.PacketHistory",
    .tp_basicsize = sizeof(History),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "sfu.rtp.PacketHistory in C",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)history_init,
    .tp_dealloc = (destructor)history_dealloc,
    .tp_traverse = (traverseproc)history_traverse,
    .tp_clear = (inquiry)history_clear,
    .tp_methods = history_methods,
};

/* -- Leg -------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Mapper *mapper;
    History *history;
    PyObject *pending;  /* list: the subscriber transport's packets of this turn */
    PyObject *enqueue;  /* called when ``pending`` gets its first packet of a turn */
    uint32_t ssrc;
    int payload_type;
    int red_in;         /* the publisher's RED payload type (-1: none): such packets go to Python */
    int active;         /* ready to forward on the fast path */
    unsigned char id_map[256]; /* publisher extension id -> this leg's (0: dropped) */
    int mid_id;
    unsigned char mid[256];
    Py_ssize_t mid_length;
    long long bytes_out;
    long long sr_packets, sr_octets; /* what the leg's Sender Reports count (payload octets) */
    unsigned long long sr_timestamp, sr_ntp;
    double last_sent_at; /* NaN: never */
} Leg;

static int leg_init(Leg *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"ssrc", "payload_type", "history_size", "first_sequence_number", "first_timestamp",
                            "pending", "enqueue", NULL};
    unsigned long long ssrc, seq, ts;
    int payload_type;
    Py_ssize_t history_size;
    PyObject *pending, *enqueue;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "KinKKO!O", names, &ssrc, &payload_type, &history_size, &seq,
                                     &ts, &PyList_Type, &pending, &enqueue))
        return -1;
    if (self->mapper != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Leg already initialised");
        return -1;
    }
    if (payload_type < 0 || payload_type > 127) {
        PyErr_SetString(PyExc_ValueError, "payload type out of range");
        return -1;
    }
    if (!PyCallable_Check(enqueue)) {
        PyErr_SetString(PyExc_TypeError, "enqueue must be callable");
        return -1;
    }
    self->mapper = (Mapper *)PyObject_CallFunction((PyObject *)&MapperType, "KK", seq, ts);
    if (self->mapper == NULL)
        return -1;
    self->history = (History *)PyObject_CallFunction((PyObject *)&HistoryType, "n", history_size);
    if (self->history == NULL)
        return -1;
    self->pending = Py_NewRef(pending);
    self->enqueue = Py_NewRef(enqueue);
    self->ssrc = (uint32_t)ssrc;
    self->payload_type = payload_type;
    self->red_in = -1;
    self->active = 0;
    memset(self->id_map, 0, sizeof self->id_map);
    self->mid_id = 0;
    self->mid_length = 0;
    self->last_sent_at = NAN;
    return 0;
}

static int leg_traverse(Leg *self, visitproc visit, void *arg) {
    Py_VISIT(self->mapper);
    Py_VISIT(self->history);
    Py_VISIT(self->pending);
    Py_VISIT(self->enqueue);
    return 0;
}

static int leg_clear(Leg *self) {
    Py_CLEAR(self->mapper);
    Py_CLEAR(self->history);
    Py_CLEAR(self->pending);
    Py_CLEAR(self->enqueue);
    return 0;
}

static void leg_dealloc(Leg *self) {
    PyObject_GC_UnTrack(self);
    leg_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The wall clock as aiortc's clock.current_ntp_time(): to the microsecond. */
static unsigned long long ntp_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    unsigned long long micros = (unsigned long long)now.tv_nsec / 1000;
    return (((unsigned long long)now.tv_sec + NTP_EPOCH_OFFSET_S) << 32) | ((micros << 32) / 1000000ull);
}

static void leg_note_sent(Leg *leg, uint32_t timestamp, Py_ssize_t payload_bytes) {
    if (leg->sr_packets == 0 || leg->sr_timestamp != timestamp) {
        leg->sr_ntp = ntp_now();
        leg->sr_timestamp = timestamp;
    }
    leg->sr_octets += payload_bytes;
    leg->sr_packets++;
}

static PyObject *leg_note_sent_py(Leg *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "note_sent() takes 2 arguments (timestamp, payload_bytes)");
        return NULL;
    }
    unsigned long long ts = PyLong_AsUnsignedLongLongMask(args[0]);
    if (ts == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t size = PyLong_AsSsize_t(args[1]);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    leg_note_sent(self, (uint32_t)ts, size);
    Py_RETURN_NONE;
}

/* set_rewriter(id_map, mid_id, mid): the header extensions of this leg (sfu.rtp.ExtensionRewriter's). */
static PyObject *leg_set_rewriter(Leg *self, PyObject *args) {
    PyObject *id_map;
    int mid_id;
    Py_buffer mid;
    if (!PyArg_ParseTuple(args, "O!iy*", &PyDict_Type, &id_map, &mid_id, &mid))
        return NULL;
    unsigned char table[256];
    memset(table, 0, sizeof table);
    PyObject *key, *value;
    Py_ssize_t position = 0;
    int ok = mid.len <= 255 && mid_id >= 0 && mid_id <= 255;
    while (ok && PyDict_Next(id_map, &position, &key, &value)) {
        long from = PyLong_AsLong(key), to = PyLong_AsLong(value);
        if (PyErr_Occurred()) {
            PyBuffer_Release(&mid);
            return NULL;
        }
        if (from < 1 || from > 255 || to < 1 || to > 255)
            ok = 0;
        else
            table[from] = (unsigned char)to;
    }
    if (!ok) {
        PyBuffer_Release(&mid);
        PyErr_SetString(PyExc_ValueError, "extension ids are 1-255 and a mid at most 255 bytes");
        return NULL;
    }
    memcpy(self->id_map, table, sizeof table);
    self->mid_id = mid_id;
    memcpy(self->mid, mid.buf, (size_t)mid.len);
    self->mid_length = mid.len;
    PyBuffer_Release(&mid);
    Py_RETURN_NONE;
}

static PyObject *leg_get_mapper(Leg *self, void *closure) { return Py_NewRef((PyObject *)self->mapper); }
static PyObject *leg_get_history(Leg *self, void *closure) { return Py_NewRef((PyObject *)self->history); }

static PyObject *time_or_none(double t) {
    if (isnan(t))
        Py_RETURN_NONE;
    return PyFloat_FromDouble(t);
}

static PyObject *leg_get_last_sent_at(Leg *self, void *closure) { return time_or_none(self->last_sent_at); }

static int set_time(double *field, PyObject *value) {
    if (value == NULL || value == Py_None) {
        *field = NAN;
        return 0;
    }
    double t = PyFloat_AsDouble(value);
    if (t == -1.0 && PyErr_Occurred())
        return -1;
    *field = t;
    return 0;
}

static int leg_set_last_sent_at(Leg *self, PyObject *value, void *closure) { return set_time(&self->last_sent_at, value); }

static PyObject *leg_get_active(Leg *self, void *closure) { return PyBool_FromLong(self->active); }

static int leg_set_active(Leg *self, PyObject *value, void *closure) {
    int truth = value == NULL ? 0 : PyObject_IsTrue(value);
    if (truth < 0)
        return -1;
    self->active = truth;
    return 0;
}

static PyObject *leg_get_red_in(Leg *self, void *closure) {
    if (self->red_in < 0)
        Py_RETURN_NONE;
    return PyLong_FromLong(self->red_in);
}

static int leg_set_red_in(Leg *self, PyObject *value, void *closure) {
    if (value == NULL || value == Py_None) {
        self->red_in = -1;
        return 0;
    }
    long pt = PyLong_AsLong(value);
    if (pt == -1 && PyErr_Occurred())
        return -1;
    self->red_in = (pt >= 0 && pt <= 127) ? (int)pt : -1;
    return 0;
}

static PyMethodDef leg_methods[] = {
    {"note_sent", (PyCFunction)(void (*)(void))leg_note_sent_py, METH_FASTCALL,
     "note_sent(timestamp, payload_bytes): count a packet sent on the slow path for Sender Reports"},
    {"set_rewriter", (PyCFunction)leg_set_rewriter, METH_VARARGS,
     "set_rewriter(id_map, mid_id, mid): this leg's header extensions"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef leg_members[] = {
    {"ssrc", T_UINT, offsetof(Leg, ssrc), READONLY, NULL},
    {"payload_type", T_INT, offsetof(Leg, payload_type), READONLY, NULL},
    {"bytes_out", T_LONGLONG, offsetof(Leg, bytes_out), 0, "their bytes, before SRTP"},
    {"sr_packets", T_LONGLONG, offsetof(Leg, sr_packets), 0, "packets the Sender Reports count"},
    {"sr_octets", T_LONGLONG, offsetof(Leg, sr_octets), 0, "payload octets the Sender Reports count"},
    {"sr_timestamp", T_ULONGLONG, offsetof(Leg, sr_timestamp), 0, "RTP timestamp of the last frame sent"},
    {"sr_ntp", T_ULONGLONG, offsetof(Leg, sr_ntp), 0, "NTP time it was first sent"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef leg_getset[] = {
    {"mapper", (getter)leg_get_mapper, NULL, "its SequenceMapper", NULL},
    {"history", (getter)leg_get_history, NULL, "its PacketHistory", NULL},
    {"active", (getter)leg_get_active, (setter)leg_set_active, "forwarded by fan_out (else handed back)", NULL},
    {"red_in", (getter)leg_get_red_in, (setter)leg_set_red_in, "the publisher's RED payload type", NULL},
    {"last_sent_at", (getter)leg_get_last_sent_at, (setter)leg_set_last_sent_at, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LegType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sfu._fanout.Leg",
    .tp_basicsize = sizeof(Leg),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One subscription's forwarding state: mapper, history, header rewrite, counters",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)leg_init,
    .tp_dealloc = (destructor)leg_dealloc,
    .tp_traverse = (traverseproc)leg_traverse,
    .tp_clear = (inquiry)leg_clear,
    .tp_methods = leg_methods,
    .tp_members = leg_members,
    .tp_getset = leg_getset,
};

/* -- fan_out ---------------------------------------------------------------------------- */

typedef struct {
    int id;
    Py_ssize_t start, end;
} Element;

/* sfu.rtp.extension_layout: the elements of the packet's extension block; -1: more than
 * ELEMENTS_MAX (only a hostile publisher sends that many: Python handles such a packet). */
static int layout(const unsigned char *data, Py_ssize_t size, unsigned profile, Py_ssize_t pos, Py_ssize_t end,
                  Element *out) {
    int count = 0;
    if (profile == ONE_BYTE_PROFILE) {
        while (pos < end) {
            unsigned byte = data[pos];
            if (byte == 0) {
                pos++;
                continue;
            }
            int id = (int)(byte >> 4);
            if (id == 15)
                break;
            if (count == ELEMENTS_MAX)
                return -1;
            Py_ssize_t start = pos + 1;
            pos = start + (Py_ssize_t)(byte & 0x0F) + 1;
            out[count++] = (Element){id, start, pos < size ? pos : size};
        }
    } else if ((profile & 0xFFF0) == TWO_BYTE_PROFILE) {
        while (pos + 1 < end) {
            int id = data[pos];
            if (id == 0) {
                pos++;
                continue;
            }
            if (count == ELEMENTS_MAX)
                return -1;
            Py_ssize_t start = pos + 2;
            pos = start + data[pos + 1];
            out[count++] = (Element){id, start, pos < size ? pos : size};
        }
    }
    return count;
}

/* The leg's extension block for the packet (ExtensionRewriter._compile's output): its length,
 * written to ``out`` when not NULL. */
static Py_ssize_t write_block(const Leg *leg, const unsigned char *data, const Element *elements, int count,
                              unsigned char *out) {
    int kept = 0, one_byte = 1;
    Py_ssize_t size = 0;
    for (int i = 0; i < count; i++) {
        int to = leg->id_map[elements[i].id];
        if (!to)
            continue;
        Py_ssize_t n = elements[i].end - elements[i].start;
        if (n < 0)
            n = 0;
        if (to > 14 || n < 1 || n > 16)
            one_byte = 0;
        kept++;
        size += n;
    }
    int with_mid = leg->mid_id && leg->mid_length;
    if (with_mid) {
        if (leg->mid_id > 14 || leg->mid_length > 16)
            one_byte = 0;
        kept++;
        size += leg->mid_length;
    }
    if (!kept)
        return 0;
    size += (one_byte ? 1 : 2) * kept;
    Py_ssize_t padding = (4 - size % 4) % 4;
    Py_ssize_t total = 4 + size + padding;
    if (out == NULL)
        return total;
    unsigned profile = one_byte ? ONE_BYTE_PROFILE : TWO_BYTE_PROFILE;
    Py_ssize_t words = (size + padding) / 4;
    out[0] = (unsigned char)(profile >> 8);
    out[1] = (unsigned char)profile;
    out[2] = (unsigned char)(words >> 8);
    out[3] = (unsigned char)words;
    unsigned char *p = out + 4;
    for (int i = 0; i <= count; i++) {
        int to;
        const unsigned char *value;
        Py_ssize_t n;
        if (i < count) {
            to = leg->id_map[elements[i].id];
            if (!to)
                continue;
            value = data + elements[i].start;
            n = elements[i].end - elements[i].start;
            if (n < 0)
                n = 0;
        } else {
            if (!with_mid)
                break;
            to = leg->mid_id;
            value = leg->mid;
            n = leg->mid_length;
        }
        if (one_byte) {
            *p++ = (unsigned char)((to << 4) | (n - 1));
        } else {
            *p++ = (unsigned char)to;
            *p++ = (unsigned char)n;
        }
        memcpy(p, value, (size_t)n);
        p += n;
    }
    memset(p, 0, (size_t)padding);
    return total;
}

static inline void put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* fan_out(data, csrc_end, extension_profile, extension_start, payload_start, payload_end,
 *         sequence_number, timestamp, keyframe, now, legs)
 *     -> (waiting, packets, bytes, handed_back)
 *
 * Forwards one publisher packet (its parsed header's fields: sfu.rtp.RtpHeader) to each active
 * leg of ``legs``: Subscription.send's work.  ``waiting``: some leg waits for a keyframe;
 * ``packets``, ``bytes``: what was queued; ``handed_back``: the indexes in ``legs`` of the legs
 * left to Python (inactive, or RED to convert), or None. */
static PyObject *fan_out(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "fan_out() takes 11 arguments");
        return NULL;
    }
    if (!PyBytes_Check(args[0]) || !PyList_Check(args[10])) {
        PyErr_SetString(PyExc_TypeError, "fan_out(data: bytes, ..., legs: list)");
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    /* Each conversion runs only while none has failed: the C API is not called with an error set. */
    Py_ssize_t csrc_end = PyLong_AsSsize_t(args[1]), extension_start = 0, payload_start = 0, payload_end = 0;
    long profile = 0;
    unsigned long seq = 0, ts = 0;
    int keyframe = 0;
    double now = 0.0;
    if (!PyErr_Occurred())
        profile = PyLong_AsLong(args[2]);
    if (!PyErr_Occurred())
        extension_start = PyLong_AsSsize_t(args[3]);
    if (!PyErr_Occurred())
        payload_start = PyLong_AsSsize_t(args[4]);
    if (!PyErr_Occurred())
        payload_end = PyLong_AsSsize_t(args[5]);
    if (!PyErr_Occurred())
        seq = PyLong_AsUnsignedLongMask(args[6]) & 0xFFFF;
    if (!PyErr_Occurred())
        ts = PyLong_AsUnsignedLongMask(args[7]) & 0xFFFFFFFFul;
    if (!PyErr_Occurred())
        keyframe = PyObject_IsTrue(args[8]);
    if (!PyErr_Occurred())
        now = PyFloat_AsDouble(args[9]);
    if (PyErr_Occurred())
        return NULL;
    if (size < 12 || csrc_end < 12 || csrc_end > payload_start || extension_start < csrc_end
        || extension_start > payload_start || payload_start > size || payload_end < payload_start || payload_end > size) {
        PyErr_SetString(PyExc_ValueError, "header offsets do not fit the packet");
        return NULL;
    }
    PyObject *legs = args[10];
    int payload_type = data[1] & 0x7F;
    Element elements[ELEMENTS_MAX];
    int count = profile ? layout(data, size, (unsigned)profile, extension_start, payload_start, elements) : 0;
    Py_ssize_t payload_bytes = payload_end - payload_start;
    Py_ssize_t tail = size - payload_start; /* payload and padding, untouched */
    int waiting = 0;
    long long packets = 0, octets = 0;
    PyObject *handed_back = NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(legs); i++) { /* re-read: enqueue() runs Python */
        PyObject *item = PyList_GET_ITEM(legs, i);
        if (Py_TYPE(item) != &LegType) {
            PyErr_SetString(PyExc_TypeError, "legs must be sfu._fanout.Leg");
            goto error;
        }
        Leg *leg = (Leg *)item;
        if (!leg->active || leg->red_in == payload_type || leg->mapper == NULL || count < 0) {
            if (handed_back == NULL && (handed_back = PyList_New(0)) == NULL)
                goto error;
            PyObject *index = PyLong_FromSsize_t(i);
            if (index == NULL || PyList_Append(handed_back, index) < 0) {
                Py_XDECREF(index);
                goto error;
            }
            Py_DECREF(index);
            continue;
        }
        Mapper *mapper = leg->mapper;
        uint32_t out_seq, out_ts;
        if (!mapper_map(mapper, (uint32_t)seq, (uint32_t)ts, &out_seq, &out_ts)) {
            if (mapper->start_seq >= 0)
                continue;
            if (!keyframe) {
                waiting = 1;
                continue;
            }
            mapper_start(mapper, (uint32_t)seq, (uint32_t)ts);
            if (!mapper_map(mapper, (uint32_t)seq, (uint32_t)ts, &out_seq, &out_ts))
                continue;
        }
        Py_ssize_t block = write_block(leg, data, elements, count, NULL);
        Py_ssize_t length = 12 + (csrc_end - 12) + block + tail;
        PyObject *packet = PyBytes_FromStringAndSize(NULL, length);
        if (packet == NULL)
            goto error;
        unsigned char *out = (unsigned char *)PyBytes_AS_STRING(packet);
        out[0] = block ? (unsigned char)((data[0] & 0xEF) | 0x10) : (unsigned char)(data[0] & 0xEF);
        out[1] = (unsigned char)((data[1] & 0x80) | leg->payload_type);
        out[2] = (unsigned char)(out_seq >> 8);
        out[3] = (unsigned char)out_seq;
        put32(out + 4, out_ts);
        put32(out + 8, leg->ssrc);
        memcpy(out + 12, data + 12, (size_t)(csrc_end - 12));
        write_block(leg, data, elements, count, out + csrc_end);
        memcpy(out + csrc_end + block, data + payload_start, (size_t)tail);
        history_put(leg->history, out_seq, packet);
        int first = PyList_GET_SIZE(leg->pending) == 0;
        if (PyList_Append(leg->pending, packet) < 0) {
            Py_DECREF(packet);
            goto error;
        }
        Py_DECREF(packet);
        leg->last_sent_at = now;
        leg_note_sent(leg, out_ts, payload_bytes);
        leg->bytes_out += length;
        packets++;
        octets += length;
        if (first) {
            /* Python code, last: the leg is not touched after it (it could drop the leg). */
            PyObject *enqueue = Py_NewRef(leg->enqueue);
            PyObject *done = PyObject_CallNoArgs(enqueue);
            Py_DECREF(enqueue);
            if (done == NULL)
                goto error;
            Py_DECREF(done);
        }
    }
    return Py_BuildValue("(OLLN)", waiting ? Py_True : Py_False, packets, octets,
                         handed_back != NULL ? handed_back : Py_NewRef(Py_None));
error:
    Py_XDECREF(handed_back);
    return NULL;
}

static PyMethodDef methods[] = {
    {"fan_out", (PyCFunction)(void (*)(void))fan_out, METH_FASTCALL,
     "fan_out(data, csrc_end, extension_profile, extension_start, payload_start, payload_end, sequence_number, "
     "timestamp, keyframe, now, legs) -> (waiting, packets, bytes, handed_back)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "sfu._fanout", "One publisher packet to all its subscriptions, in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__fanout(void) {
    if (PyType_Ready(&MapperType) < 0 || PyType_Ready(&HistoryType) < 0 || PyType_Ready(&LegType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "SequenceMapper", (PyObject *)&MapperType) < 0
        || PyModule_AddObjectRef(m, "PacketHistory", (PyObject *)&HistoryType) < 0
        || PyModule_AddObjectRef(m, "Leg", (PyObject *)&LegType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
