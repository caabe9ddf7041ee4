/* The Internet checksum (RFC 1071) in C: the optional fast path of checksum.py.
 *
 * ones_sum(data, start=0) -> int: the folded 16-bit ones'-complement sum of data (any
 * object with the buffer protocol; an odd length is padded with a zero byte), with start
 * (a previous sum) added in. Same results as checksum.py's pure-Python version, which
 * tests/netstack/test_checksum.py checks on both.
 *
 * The words are summed in the machine's byte order, 32 bits at a time into a 64-bit
 * accumulator, and the folded result is byte-swapped at the end (RFC 1071, section 2(B):
 * the sum is independent of byte order).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static uint32_t fold(uint64_t acc)
{
    while (acc >> 16)
        acc = (acc & 0xffff) + (acc >> 16);
    return (uint32_t)acc;
}

static uint32_t native_sum(const unsigned char *p, Py_ssize_t n)
{
    uint64_t acc = 0;
    while (n >= 16) {
        uint32_t w[4];
        memcpy(w, p, 16);
        acc += (uint64_t)w[0] + w[1] + w[2] + w[3];
        p += 16;
        n -= 16;
    }
    while (n >= 4) {
        uint32_t w;
        memcpy(&w, p, 4);
        acc += w;
        p += 4;
        n -= 4;
    }
    if (n >= 2) {
        uint16_t w;
        memcpy(&w, p, 2);
        acc += w;
        p += 2;
        n -= 2;
    }
    if (n) {
        uint16_t w = 0;
        memcpy(&w, p, 1); /* the odd byte is the high byte of a zero-padded word */
        acc += w;
    }
    return fold(acc);
}

static PyObject *ones_sum(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    unsigned long start = 0;
    uint32_t sum;

    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "ones_sum(data, start=0)");
        return NULL;
    }
    if (nargs == 2) {
        start = PyLong_AsUnsignedLong(args[1]);
        if (start == (unsigned long)-1 && PyErr_Occurred())
            return NULL;
        if (start > 0xffff) {
            PyErr_SetString(PyExc_ValueError, "start must be a 16-bit sum");
            return NULL;
        }
    }
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (view.len > (Py_ssize_t)1 << 40) { /* keeps the 64-bit accumulator from overflowing */
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "buffer too large");
        return NULL;
    }
    sum = native_sum((const unsigned char *)view.buf, view.len);
    PyBuffer_Release(&view);
#if PY_LITTLE_ENDIAN
    sum = ((sum & 0xff) << 8) | (sum >> 8);
#endif
    return PyLong_FromUnsignedLong(fold((uint64_t)sum + start));
}

/* tcp_packet(src, dst, ident, sport, dport, seq, ack, flags, window, options, payload) -> bytes
 *
 * The IP packet of one TCP segment, checksums included, in one allocation: what
 * segment.py's PacketBuilder.build does in Python (and still does without this module).
 * src and dst are 4 bytes (IPv4: ident is the IP ID, DF set, TTL 64) or 16 (IPv6: ident is
 * ignored). seq and ack are 32-bit; the header has no urgent pointer; options are a multiple
 * of 4 bytes, at most 40. The sums are made in the machine's byte order and stored as they
 * are (RFC 1071, 2(B)).
 *
 * tcp_run(src, dst, ident, sport, dport, seq, ack, flags, window, options, data, offset,
 *         size, count) -> list[bytes]
 *
 * count such packets, each carrying the next size bytes of data from offset on, with seq
 * advanced by size and ident by one from each to the next (both wrapping): a burst of new
 * segments built in one call (PacketBuilder.build_run), the same bytes as count tcp_packet
 * calls.
 */
static int get_u32(PyObject *o, uint32_t max, uint32_t *out)
{
    unsigned long v = PyLong_AsUnsignedLong(o);
    if (v == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    if (v > max) {
        PyErr_SetString(PyExc_ValueError, "tcp_packet: a field is out of range");
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

static void put16(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* What every packet of a call shares: the addresses, ports, ACK, flags, window, options. */
typedef struct {
    Py_buffer src, dst, options;
    uint32_t ident, sport, dport, seq, ack, flags, window;
} Segment;

/* Read args[0..9] into seg; on success the three buffers are held (release_segment). */
static int read_segment(PyObject *const *args, Segment *seg)
{
    if (get_u32(args[2], 0xffff, &seg->ident) < 0 || get_u32(args[3], 0xffff, &seg->sport) < 0 ||
        get_u32(args[4], 0xffff, &seg->dport) < 0 ||
        get_u32(args[5], 0xffffffffu, &seg->seq) < 0 ||
        get_u32(args[6], 0xffffffffu, &seg->ack) < 0 || get_u32(args[7], 0xff, &seg->flags) < 0 ||
        get_u32(args[8], 0xffff, &seg->window) < 0)
        return -1;
    if (PyObject_GetBuffer(args[0], &seg->src, PyBUF_SIMPLE) < 0)
        return -1;
    if (PyObject_GetBuffer(args[1], &seg->dst, PyBUF_SIMPLE) < 0)
        goto release_src;
    if (PyObject_GetBuffer(args[9], &seg->options, PyBUF_SIMPLE) < 0)
        goto release_dst;
    if (!(seg->src.len == 4 || seg->src.len == 16) || seg->dst.len != seg->src.len) {
        PyErr_SetString(PyExc_ValueError, "tcp_packet: addresses of 4 or 16 bytes");
        goto release_options;
    }
    if (seg->options.len % 4 || seg->options.len > 40) {
        PyErr_SetString(PyExc_ValueError, "tcp_packet: bad options");
        goto release_options;
    }
    return 0;
release_options:
    PyBuffer_Release(&seg->options);
release_dst:
    PyBuffer_Release(&seg->dst);
release_src:
    PyBuffer_Release(&seg->src);
    return -1;
}

static void release_segment(Segment *seg)
{
    PyBuffer_Release(&seg->options);
    PyBuffer_Release(&seg->dst);
    PyBuffer_Release(&seg->src);
}

/* One packet of seg with seq and ident as given and payload_len bytes of payload, or NULL
 * with an exception set. */
static PyObject *write_packet(const Segment *seg, uint32_t ident, uint32_t seq,
                              const unsigned char *payload, Py_ssize_t payload_len)
{
    int v4 = seg->src.len == 4;
    Py_ssize_t ip_len = v4 ? 20 : 40;
    Py_ssize_t tcp_len = 20 + seg->options.len + payload_len;
    unsigned char pseudo[40];
    Py_ssize_t pseudo_len;
    unsigned char *p, *tcp;
    uint64_t acc;
    uint16_t sum;
    PyObject *out;

    if (tcp_len > 0xffff - ip_len) {
        PyErr_SetString(PyExc_ValueError, "tcp_packet: too long");
        return NULL;
    }
    out = PyBytes_FromStringAndSize(NULL, ip_len + tcp_len);
    if (out == NULL)
        return NULL;
    p = (unsigned char *)PyBytes_AS_STRING(out);
    tcp = p + ip_len;
    if (v4) {
        p[0] = 0x45;
        p[1] = 0;
        put16(p + 2, (uint32_t)(ip_len + tcp_len));
        put16(p + 4, ident);
        put16(p + 6, 0x4000); /* DF */
        p[8] = 64;
        p[9] = 6;
        p[10] = p[11] = 0;
        memcpy(p + 12, seg->src.buf, 4);
        memcpy(p + 16, seg->dst.buf, 4);
        sum = (uint16_t)~fold(native_sum(p, 20));
        memcpy(p + 10, &sum, 2);
        memcpy(pseudo, seg->src.buf, 4);
        memcpy(pseudo + 4, seg->dst.buf, 4);
        pseudo[8] = 0;
        pseudo[9] = 6;
        put16(pseudo + 10, (uint32_t)tcp_len);
        pseudo_len = 12;
    } else {
        put32(p, 0x60000000u);
        put16(p + 4, (uint32_t)tcp_len);
        p[6] = 6;
        p[7] = 64;
        memcpy(p + 8, seg->src.buf, 16);
        memcpy(p + 24, seg->dst.buf, 16);
        memcpy(pseudo, seg->src.buf, 16);
        memcpy(pseudo + 16, seg->dst.buf, 16);
        put32(pseudo + 32, (uint32_t)tcp_len);
        put32(pseudo + 36, 6);
        pseudo_len = 40;
    }
    put16(tcp, seg->sport);
    put16(tcp + 2, seg->dport);
    put32(tcp + 4, seq);
    put32(tcp + 8, seg->ack);
    tcp[12] = (unsigned char)(((20 + seg->options.len) / 4) << 4);
    tcp[13] = (unsigned char)seg->flags;
    put16(tcp + 14, seg->window);
    tcp[16] = tcp[17] = tcp[18] = tcp[19] = 0;
    if (seg->options.len)
        memcpy(tcp + 20, seg->options.buf, seg->options.len);
    if (payload_len)
        memcpy(tcp + 20 + seg->options.len, payload, payload_len);
    acc = (uint64_t)native_sum(pseudo, pseudo_len) + native_sum(tcp, tcp_len);
    sum = (uint16_t)~fold(acc);
    memcpy(tcp + 16, &sum, 2);
    return out;
}

static PyObject *tcp_packet(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Segment seg;
    Py_buffer payload;
    PyObject *out;

    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError,
                        "tcp_packet(src, dst, ident, sport, dport, seq, ack, flags, window, "
                        "options, payload)");
        return NULL;
    }
    if (read_segment(args, &seg) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[10], &payload, PyBUF_SIMPLE) < 0) {
        release_segment(&seg);
        return NULL;
    }
    out = write_packet(&seg, seg.ident, seg.seq, payload.buf, payload.len);
    PyBuffer_Release(&payload);
    release_segment(&seg);
    return out;
}

static PyObject *tcp_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Segment seg;
    Py_buffer data;
    Py_ssize_t offset, size, count, i;
    PyObject *out = NULL;

    if (nargs != 14) {
        PyErr_SetString(PyExc_TypeError,
                        "tcp_run(src, dst, ident, sport, dport, seq, ack, flags, window, "
                        "options, data, offset, size, count)");
        return NULL;
    }
    offset = PyLong_AsSsize_t(args[11]);
    size = PyLong_AsSsize_t(args[12]);
    count = PyLong_AsSsize_t(args[13]);
    if ((offset == -1 || size == -1 || count == -1) && PyErr_Occurred())
        return NULL;
    if (read_segment(args, &seg) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[10], &data, PyBUF_SIMPLE) < 0) {
        release_segment(&seg);
        return NULL;
    }
    if (offset < 0 || size < 0 || count < 0 || (size && count > (data.len - offset) / size) ||
        offset > data.len) {
        PyErr_SetString(PyExc_ValueError, "tcp_run: the run is not within data");
        goto done;
    }
    out = PyList_New(count);
    if (out == NULL)
        goto done;
    for (i = 0; i < count; i++) {
        PyObject *packet = write_packet(&seg, (seg.ident + (uint32_t)i) & 0xffff,
                                        seg.seq + (uint32_t)(i * size),
                                        (const unsigned char *)data.buf + offset + i * size, size);
        if (packet == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, packet);
    }
done:
    PyBuffer_Release(&data);
    release_segment(&seg);
    return out;
}

/* tcp4_fields(packet, verify) -> None | int | tuple
 *
 * The arriving side of tcp_packet: what Stack._receive and Stack._tcp read from an IPv4 TCP
 * packet, checked in the same order, in one call (segment.py's py_tcp4_fields is the same
 * in Python, and the tests hold the two to the same answers):
 *   None      not IPv4 carrying TCP (version, length under 20, protocol): the general path;
 *   an int    the IP header is bad: 1 lengths, 2 a fragment, 3 the header checksum;
 *   a tuple   (status, src, dst, sport, dport, seq, ack, flags, window, options, payload):
 *             status 0, or why TCP drops it: 1 the header length, 2 the checksum. src and dst
 *             are set either way (the caller checks the address first); the rest only when
 *             status is 0. options and payload are bytes.
 * verify false skips both checksums (a TUN device that checked them).
 */
static PyObject *tcp4_fields(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    const unsigned char *p, *tcp;
    Py_ssize_t ihl, total, seg_len, header_len;
    int verify, status = 0;
    PyObject *out = NULL;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "tcp4_fields(packet, verify)");
        return NULL;
    }
    verify = PyObject_IsTrue(args[1]);
    if (verify < 0)
        return NULL;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    p = (const unsigned char *)view.buf;
    if (view.len < 20 || p[0] >> 4 != 4 || p[9] != 6) {
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    ihl = (Py_ssize_t)(p[0] & 0x0f) * 4;
    total = ((Py_ssize_t)p[2] << 8) | p[3];
    if (ihl < 20 || total < ihl + 20 || total > view.len) {
        out = PyLong_FromLong(1);
        goto done;
    }
    if ((p[6] & 0x3f) || p[7]) {
        out = PyLong_FromLong(2);
        goto done;
    }
    if (verify && fold(native_sum(p, ihl)) != 0xffff) {
        out = PyLong_FromLong(3);
        goto done;
    }
    tcp = p + ihl;
    seg_len = total - ihl;
    header_len = (Py_ssize_t)(tcp[12] >> 4) * 4;
    if (header_len < 20 || header_len > seg_len) {
        status = 1;
    } else if (verify) {
        unsigned char pseudo[12];
        memcpy(pseudo, p + 12, 8);
        pseudo[8] = 0;
        pseudo[9] = 6;
        put16(pseudo + 10, (uint32_t)seg_len);
        if (fold((uint64_t)native_sum(pseudo, 12) + native_sum(tcp, seg_len)) != 0xffff)
            status = 2;
    }
    if (status)
        out = Py_BuildValue("(iy#y#iiiiiiyy)", status, p + 12, (Py_ssize_t)4, p + 16,
                            (Py_ssize_t)4, 0, 0, 0, 0, 0, 0, "", "");
    else
        out = Py_BuildValue(
            "(iy#y#iikkiiy#y#)", 0, p + 12, (Py_ssize_t)4, p + 16, (Py_ssize_t)4,
            (int)((tcp[0] << 8) | tcp[1]), (int)((tcp[2] << 8) | tcp[3]),
            (unsigned long)(((uint32_t)tcp[4] << 24) | ((uint32_t)tcp[5] << 16) |
                            ((uint32_t)tcp[6] << 8) | tcp[7]),
            (unsigned long)(((uint32_t)tcp[8] << 24) | ((uint32_t)tcp[9] << 16) |
                            ((uint32_t)tcp[10] << 8) | tcp[11]),
            (int)tcp[13], (int)((tcp[14] << 8) | tcp[15]), tcp + 20, header_len - 20,
            tcp + header_len, seg_len - header_len);
done:
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef methods[] = {
    {"tcp4_fields", (PyCFunction)(void (*)(void))tcp4_fields, METH_FASTCALL,
     "tcp4_fields(packet, verify): an IPv4 TCP packet's checked fields (see the source)."},
    {"tcp_packet", (PyCFunction)(void (*)(void))tcp_packet, METH_FASTCALL,
     "tcp_packet(src, dst, ident, sport, dport, seq, ack, flags, window, options, payload): "
     "the IP packet of a TCP segment, checksums included."},
    {"tcp_run", (PyCFunction)(void (*)(void))tcp_run, METH_FASTCALL,
     "tcp_run(src, dst, ident, sport, dport, seq, ack, flags, window, options, data, offset, "
     "size, count): count tcp_packet packets carrying consecutive size-byte slices of data."},
    {"ones_sum", (PyCFunction)(void (*)(void))ones_sum, METH_FASTCALL,
     "ones_sum(data, start=0): the folded 16-bit ones'-complement sum of data plus start."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef_Slot slots[] = {
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_checksum", "The Internet checksum in C (see checksum.py).", 0,
    methods, slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__checksum(void)
{
    return PyModuleDef_Init(&module);
}
