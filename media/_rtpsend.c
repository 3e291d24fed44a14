/* Protect a batch of RTP packets with libsrtp and send them in one sendmmsg.
 *
 * The SFU's forwarding cost per packet and subscriber was mostly fixed costs: one sendto
 * system call and one crossing into libsrtp through cffi each.  Here the packets due to one
 * subscriber's socket in one event-loop turn cross into C once, are protected in place in
 * this module's buffers, and leave in one sendmmsg (media/send_batch.py decides what goes
 * together; media/pylibsrtp_internals.py hands over the libsrtp session).
 *
 * libsrtp is pylibsrtp's bundled copy: its srtp_protect is reached through the function
 * pointer cffi gives for it, and the session through its srtp_t, both passed as integers.
 * Everything runs with the GIL held, on the event loop's thread, as pylibsrtp's own calls
 * do, so the static buffers are never shared.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

#define BATCH 64
#define TRAILER_MAX (16 + 128) /* pylibsrtp.SRTP_MAX_TRAILER_LEN: tag and MKI */
#define DATAGRAM_MAX (1500 - TRAILER_MAX) /* the longest packet pylibsrtp 1.0 protects */

typedef int (*srtp_protect_fn)(void *ctx, void *rtp, int *len);

static unsigned char buffers[BATCH][DATAGRAM_MAX + TRAILER_MAX];
static struct iovec iovecs[BATCH];
static struct mmsghdr messages[BATCH];

/* Protect ``packet`` (bytes) into ``buffer``: 1 done (its length in *length), 0 refused (too
 * long, or libsrtp's status: counted in *failed, *last_error), -1 a Python error. */
static int protect_into(PyObject *packet, srtp_protect_fn protect, void *session, unsigned char *buffer,
                        int *length, Py_ssize_t *failed, int *last_error) {
    char *data;
    Py_ssize_t size;
    if (PyBytes_AsStringAndSize(packet, &data, &size) < 0)
        return -1;
    if (size > DATAGRAM_MAX) {
        (*failed)++;
        *last_error = 2; /* srtp_err_status_bad_param: what pylibsrtp refuses as too long */
        return 0;
    }
    memcpy(buffer, data, (size_t)size);
    *length = (int)size;
    int status = protect(session, buffer, length);
    if (status != 0) {
        (*failed)++;
        *last_error = status;
        return 0;
    }
    return 1;
}

/* pack_address(host, port) -> bytes: the sockaddr of a numeric IPv4 or IPv6 address. */
static PyObject *pack_address(PyObject *self, PyObject *args) {
    const char *host;
    int port;
    if (!PyArg_ParseTuple(args, "si", &host, &port))
        return NULL;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return NULL;
    }
    struct addrinfo hints, *found = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_flags = AI_NUMERICHOST;
    hints.ai_socktype = SOCK_DGRAM;
    int rc = getaddrinfo(host, NULL, &hints, &found);
    if (rc != 0 || found == NULL) {
        PyErr_Format(PyExc_ValueError, "not a numeric address: %s", host);
        return NULL;
    }
    struct sockaddr_storage address;
    memset(&address, 0, sizeof address);
    memcpy(&address, found->ai_addr, found->ai_addrlen);
    socklen_t length = found->ai_addrlen;
    freeaddrinfo(found);
    if (address.ss_family == AF_INET)
        ((struct sockaddr_in *)&address)->sin_port = htons((uint16_t)port);
    else if (address.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&address)->sin6_port = htons((uint16_t)port);
    else {
        PyErr_SetString(PyExc_ValueError, "neither IPv4 nor IPv6");
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)&address, length);
}

/* Datagrams of one batch that go as one message: with UDP generic segmentation offload
 * (UDP_SEGMENT), a run of datagrams of one size, the last one possibly shorter, is one message
 * the kernel (or the network card) cuts into datagrams after one pass through the IP stack
 * instead of one pass each.  A video frame's packets are of one size but the last, so a
 * subscriber's frame is one message. */
#define GSO_SEGMENTS_MAX 64 /* UDP_MAX_SEGMENTS of older kernels */
#define GSO_BYTES_MAX 65000 /* a UDP datagram's payload: under 65,507 */

static union {
    char buffer[CMSG_SPACE(sizeof(uint16_t))];
    struct cmsghdr align;
} controls[BATCH];
static int message_first[BATCH]; /* index of a message's first datagram in buffers/iovecs */
static int message_count[BATCH];

/* Lay out datagrams first..count-1 as messages from message index m on; returns the messages. */
static int lay_out(int first, int count, int m, void *address, socklen_t address_length, int gso) {
    int i = first;
    while (i < count) {
        size_t segment = iovecs[i].iov_len, total = segment;
        int j = i + 1;
        if (gso) {
            while (j < count && j - i < GSO_SEGMENTS_MAX && total + iovecs[j].iov_len <= GSO_BYTES_MAX
                   && iovecs[j].iov_len <= segment) {
                total += iovecs[j].iov_len;
                if (iovecs[j++].iov_len < segment)
                    break; /* a shorter datagram ends the run */
            }
        }
        struct msghdr *header = &messages[m].msg_hdr;
        memset(header, 0, sizeof *header);
        header->msg_name = address;
        header->msg_namelen = address_length;
        header->msg_iov = &iovecs[i];
        header->msg_iovlen = (size_t)(j - i);
        if (j - i > 1) {
            header->msg_control = controls[m].buffer;
            header->msg_controllen = sizeof controls[m].buffer;
            struct cmsghdr *control = CMSG_FIRSTHDR(header);
            control->cmsg_level = SOL_UDP;
            control->cmsg_type = UDP_SEGMENT;
            control->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t size = (uint16_t)segment;
            memcpy(CMSG_DATA(control), &size, sizeof size);
        }
        message_first[m] = i;
        message_count[m] = j - i;
        m++;
        i = j;
    }
    return m;
}

/* send(fd, protect, session, address, packets, gso)
 *     -> (sent, sent_bytes, unsent, failed, last_error, calls, gso)
 *
 * Protects each packet of the list ``packets`` (bytes) with ``protect(session, ...)`` and sends
 * them to ``address`` (from pack_address) on ``fd``, BATCH at a time, runs of one size as one
 * UDP_SEGMENT message when ``gso`` is true.  ``unsent``: the protected packets the socket would
 * not take now (EAGAIN), in order, for the caller's transport to queue (they are protected
 * already: protecting again would repeat an SRTP index).  ``failed``: packets dropped, because
 * libsrtp refused them (too long, key limit) or the socket refused them for good (as a UDP
 * transport drops them); ``last_error``: the last such libsrtp status or errno, negated for
 * errno (0: none); ``calls``: the sendmmsg calls made; ``gso``: false once the socket refused a
 * segmented message (its route's MTU, a kernel or device without it): those datagrams went
 * one by one, and so should the socket's next ones. */
static PyObject *send_packets(PyObject *self, PyObject *args) {
    int fd, gso;
    unsigned long long protect_address, session_address;
    Py_buffer address;
    PyObject *packets;
    if (!PyArg_ParseTuple(args, "iKKy*O!p", &fd, &protect_address, &session_address, &address,
                          &PyList_Type, &packets, &gso))
        return NULL;
    srtp_protect_fn protect = (srtp_protect_fn)(uintptr_t)protect_address;
    void *session = (void *)(uintptr_t)session_address;
    socklen_t address_length = (socklen_t)address.len;
    Py_ssize_t total = PyList_GET_SIZE(packets);
    Py_ssize_t sent = 0, sent_bytes = 0, failed = 0, calls = 0;
    int last_error = 0;
    PyObject *unsent = PyList_New(0);
    if (unsent == NULL) {
        PyBuffer_Release(&address);
        return NULL;
    }
    Py_ssize_t next = 0;
    int blocked = 0;
    while (next < total && !blocked) {
        int count = 0;
        while (next < total && count < BATCH) {
            int protected_length;
            int done = protect_into(PyList_GET_ITEM(packets, next++), protect, session, buffers[count],
                                    &protected_length, &failed, &last_error);
            if (done < 0)
                goto error;
            if (done == 0)
                continue;
            iovecs[count].iov_base = buffers[count];
            iovecs[count].iov_len = (size_t)protected_length;
            count++;
        }
        int messages_count = lay_out(0, count, 0, address.buf, address_length, gso);
        int done = 0; /* messages */
        int first_unsent = count; /* datagrams */
        while (done < messages_count) {
            int n = sendmmsg(fd, messages + done, (unsigned int)(messages_count - done), 0);
            calls++;
            if (n > 0) {
                for (int m = done; m < done + n; m++) {
                    for (int i = message_first[m]; i < message_first[m] + message_count[m]; i++)
                        sent_bytes += (Py_ssize_t)iovecs[i].iov_len;
                    sent += message_count[m];
                }
                done += n;
            } else if (n < 0 && errno == EINTR) {
                continue;
            } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                blocked = 1;
                first_unsent = message_first[done];
                break;
            } else if (n < 0 && message_count[done] > 1) {
                /* A segmented message refused (EIO, EINVAL: the route's MTU, no offload): the
                 * rest of the batch goes one datagram per message. */
                gso = 0;
                messages_count = lay_out(message_first[done], count, done, address.buf, address_length, 0);
            } else { /* refused for good (e.g. a firewall, an unreachable network): drop that one */
                last_error = n < 0 ? -errno : 0;
                failed++;
                done++;
            }
        }
        for (int i = first_unsent; i < count; i++) { /* blocked: the caller's transport queues them */
            PyObject *rest = PyBytes_FromStringAndSize((const char *)iovecs[i].iov_base,
                                                       (Py_ssize_t)iovecs[i].iov_len);
            if (rest == NULL || PyList_Append(unsent, rest) < 0) {
                Py_XDECREF(rest);
                goto error;
            }
            Py_DECREF(rest);
        }
    }
    /* Packets after a blocked batch are protected here too, in order, and handed back. */
    while (next < total) {
        int protected_length;
        int done = protect_into(PyList_GET_ITEM(packets, next++), protect, session, buffers[0],
                                &protected_length, &failed, &last_error);
        if (done < 0)
            goto error;
        if (done == 0)
            continue;
        PyObject *rest = PyBytes_FromStringAndSize((const char *)buffers[0], protected_length);
        if (rest == NULL || PyList_Append(unsent, rest) < 0) {
            Py_XDECREF(rest);
            goto error;
        }
        Py_DECREF(rest);
    }
    PyBuffer_Release(&address);
    return Py_BuildValue("nnNninN", sent, sent_bytes, unsent, failed, last_error, calls, PyBool_FromLong(gso));
error:
    PyBuffer_Release(&address);
    Py_DECREF(unsent);
    return NULL;
}

static PyMethodDef methods[] = {
    {"pack_address", pack_address, METH_VARARGS, "pack_address(host, port) -> sockaddr bytes"},
    {"send", send_packets, METH_VARARGS,
     "send(fd, protect, session, address, packets, gso)"
     " -> (sent, sent_bytes, unsent, failed, last_error, calls, gso)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "media._rtpsend",
    "SRTP-protect a batch of RTP packets and send them with one sendmmsg.", -1, methods,
};

PyMODINIT_FUNC PyInit__rtpsend(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (PyModule_AddIntConstant(m, "BATCH", BATCH) < 0
                      || PyModule_AddIntConstant(m, "DATAGRAM_MAX", DATAGRAM_MAX) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
