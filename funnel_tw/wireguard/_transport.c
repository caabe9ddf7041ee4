/* WireGuard transport messages sealed and opened in C: the optional fast path of
 * transport_key.py, on the system's OpenSSL (libcrypto) ChaCha20-Poly1305.
 *
 * TransportKey(key) holds one 32-byte key and an OpenSSL cipher context per direction,
 * set up once with the key; each packet then only sets the nonce. Per packet this saves
 * what the cryptography package's ChaCha20Poly1305 does around the cipher (building a
 * context, argument checks, a copy of the result) and the Python work of framing the
 * message (padding, header, counter), about 1.8 of 2.9 us per packet
 * (docs/performance.md, lever 13).
 *
 *   seal(header, counter, packet, mtu) -> bytes
 *       the whole transport message: header (message type and receiver index, 8 bytes),
 *       the counter (little-endian, 8 bytes), then the packet zero-padded as wireguard-go's
 *       calculatePaddingSize pads it, encrypted, and the 16-byte tag.
 *   seal_run(header, counter, packets, mtu, endpoint, out) -> int
 *       seal each of a list of packets with counters from `counter` on, appending
 *       (message, endpoint) to the list `out`; the bytes of the messages (lever 23).
 *   open(message) -> bytes | None
 *       the plaintext of a whole transport message (nonce from its counter field), or None
 *       if it is shorter than 32 bytes or does not authenticate.
 *
 *   open_run(batch, start, stop, receiver, replay, limit) -> tuple
 *       the receive path's loop over a run of datagrams for one keypair (lever 21): see
 *       open_run below and PyTransportKey.open_run, its pure-Python twin.
 *
 * ReplayFilter() is RFC 6479's anti-replay window, as replay.py's PyReplayFilter; open_run
 * takes this one.
 *
 * Same bytes and answers as transport_key.py's PyTransportKey and replay.py's
 * PyReplayFilter, which tests/wireguard/test_transport_key.py and test_replay.py check on
 * both.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#define KEY_LEN 32
#define TAG_LEN 16
#define HEAD_LEN 16 /* message type, receiver index, counter */
#define PADDING_MULTIPLE 16

#define REPLAY_BLOCKS 128 /* RFC 6479: 128 blocks of 64 bits */
#define REPLAY_WINDOW ((REPLAY_BLOCKS - 1) * 64)
#define TRANSPORT_TYPE 4

typedef struct {
    PyObject *replay_type; /* open_run checks its replay argument against it */
} ModuleState;

typedef struct {
    PyObject_HEAD
    uint64_t last;
    uint64_t blocks[REPLAY_BLOCKS];
} ReplayFilter;

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *seal_ctx; /* made at first use: a key seals or opens, not both */
    EVP_CIPHER_CTX *open_ctx;
    unsigned char key[KEY_LEN];
} TransportKey;

static EVP_CIPHER_CTX *context(TransportKey *self, int seal)
{
    EVP_CIPHER_CTX **slot = seal ? &self->seal_ctx : &self->open_ctx;
    EVP_CIPHER_CTX *ctx = *slot;

    if (ctx != NULL)
        return ctx;
    ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL ||
        EVP_CipherInit_ex(ctx, EVP_chacha20_poly1305(), NULL, self->key, NULL, seal) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        ERR_clear_error();
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL cannot set up ChaCha20-Poly1305");
        return NULL;
    }
    *slot = ctx;
    return ctx;
}

static void nonce_from_counter(unsigned char nonce[12], const unsigned char counter_le[8])
{
    memset(nonce, 0, 4);
    memcpy(nonce + 4, counter_le, 8);
}

static int transport_key_init(TransportKey *self, PyObject *args, PyObject *kwds)
{
    Py_buffer key;

    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "TransportKey(key) takes no keywords");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "y*:TransportKey", &key))
        return -1;
    if (key.len != KEY_LEN) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "TransportKey: the key is 32 bytes");
        return -1;
    }
    memcpy(self->key, key.buf, KEY_LEN);
    PyBuffer_Release(&key);
    EVP_CIPHER_CTX_free(self->seal_ctx); /* __init__ called again: start from the new key */
    EVP_CIPHER_CTX_free(self->open_ctx);
    self->seal_ctx = self->open_ctx = NULL;
    return 0;
}

static void transport_key_dealloc(TransportKey *self)
{
    PyTypeObject *tp = Py_TYPE(self);

    EVP_CIPHER_CTX_free(self->seal_ctx);
    EVP_CIPHER_CTX_free(self->open_ctx);
    OPENSSL_cleanse(self->key, KEY_LEN);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* wireguard-go's calculatePaddingSize */
static Py_ssize_t padding(Py_ssize_t size, Py_ssize_t mtu)
{
    Py_ssize_t last = size, padded;

    if (mtu == 0)
        return ((last + PADDING_MULTIPLE - 1) & ~(Py_ssize_t)(PADDING_MULTIPLE - 1)) - last;
    if (last > mtu)
        last %= mtu;
    padded = (last + PADDING_MULTIPLE - 1) & ~(Py_ssize_t)(PADDING_MULTIPLE - 1);
    if (padded > mtu)
        padded = mtu;
    return padded - last;
}

/* The whole message for packet[0:len] (header, counter, packet and `pad` zero bytes sealed,
 * tag) as a new bytes object, or NULL with an exception set. */
static PyObject *seal_message(EVP_CIPHER_CTX *ctx, const unsigned char *header,
                              unsigned long long counter, const unsigned char *packet,
                              Py_ssize_t len, Py_ssize_t pad)
{
    static const unsigned char zeros[PADDING_MULTIPLE];
    unsigned char nonce[12];
    unsigned char *p;
    PyObject *out;
    int n;

    out = PyBytes_FromStringAndSize(NULL, HEAD_LEN + len + pad + TAG_LEN);
    if (out == NULL)
        return NULL;
    p = (unsigned char *)PyBytes_AS_STRING(out);
    memcpy(p, header, 8);
    for (int i = 0; i < 8; i++)
        p[8 + i] = (unsigned char)(counter >> (8 * i));
    nonce_from_counter(nonce, p + 8);
    p += HEAD_LEN;
    if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, 1) != 1 ||
        (len && EVP_CipherUpdate(ctx, p, &n, packet, (int)len) != 1) ||
        (pad && EVP_CipherUpdate(ctx, p + len, &n, zeros, (int)pad) != 1) ||
        EVP_CipherFinal_ex(ctx, p + len + pad, &n) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, p + len + pad) != 1) {
        ERR_clear_error();
        Py_DECREF(out);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed to seal a packet");
        return NULL;
    }
    return out;
}

/* seal's and seal_run's counter (64 bits) and MTU (>= 0) arguments, and the 8-byte header
 * (released by the caller on success): 0, or -1 with an exception set. */
static int seal_arguments(const char *name, PyObject *header_arg, PyObject *counter_arg,
                          PyObject *mtu_arg, Py_buffer *header, unsigned long long *counter,
                          Py_ssize_t *mtu)
{
    *counter = PyLong_AsUnsignedLongLong(counter_arg);
    if (*counter == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *mtu = PyLong_AsSsize_t(mtu_arg);
    if (*mtu == -1 && PyErr_Occurred())
        return -1;
    if (*mtu < 0) {
        PyErr_Format(PyExc_ValueError, "%s: mtu must be >= 0", name);
        return -1;
    }
    if (PyObject_GetBuffer(header_arg, header, PyBUF_SIMPLE) < 0)
        return -1;
    if (header->len != 8) {
        PyBuffer_Release(header);
        PyErr_Format(PyExc_ValueError, "%s: the header is 8 bytes", name);
        return -1;
    }
    return 0;
}

static PyObject *transport_key_seal(TransportKey *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer header, packet;
    unsigned long long counter;
    Py_ssize_t mtu;
    EVP_CIPHER_CTX *ctx;
    PyObject *out = NULL;

    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "seal(header, counter, packet, mtu)");
        return NULL;
    }
    ctx = context(self, 1);
    if (ctx == NULL ||
        seal_arguments("seal", args[0], args[1], args[3], &header, &counter, &mtu) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[2], &packet, PyBUF_SIMPLE) < 0)
        goto release_header;
    if (packet.len > INT_MAX - 2 * PADDING_MULTIPLE) {
        PyErr_SetString(PyExc_ValueError, "seal: packet too large");
        goto release_packet;
    }
    out = seal_message(ctx, header.buf, counter, packet.buf, packet.len,
                       packet.len ? padding(packet.len, mtu) : 0);
release_packet:
    PyBuffer_Release(&packet);
release_header:
    PyBuffer_Release(&header);
    return out;
}

/* seal_run(header, counter, packets, mtu, endpoint, out) -> int
 *
 * seal(header, counter + i, packets[i], mtu) for each packet, in order, each appended to the
 * list `out` as (message, endpoint); returns the bytes of the messages. Packets must be
 * non-empty bytes; the counter must stay within 64 bits. Nothing is appended on an error. */
static PyObject *transport_key_seal_run(TransportKey *self, PyObject *const *args,
                                        Py_ssize_t nargs)
{
    Py_buffer header;
    unsigned long long counter;
    Py_ssize_t mtu, n, i, total = 0, start;
    PyObject *packets, *endpoint, *out, **items;
    EVP_CIPHER_CTX *ctx;

    if (nargs != 6 || !PyList_Check(args[2]) || !PyList_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError,
                        "seal_run(header, counter, packets: list, mtu, endpoint, out: list)");
        return NULL;
    }
    ctx = context(self, 1);
    if (ctx == NULL ||
        seal_arguments("seal_run", args[0], args[1], args[3], &header, &counter, &mtu) < 0)
        return NULL;
    packets = args[2];
    endpoint = args[4];
    out = args[5];
    n = PyList_GET_SIZE(packets);
    if (n && counter + (unsigned long long)(n - 1) < counter) {
        PyErr_SetString(PyExc_OverflowError, "seal_run: the counter is 64 bits");
        PyBuffer_Release(&header);
        return NULL;
    }
    items = PySequence_Fast_ITEMS(packets);
    start = PyList_GET_SIZE(out);
    for (i = 0; i < n; i++) {
        PyObject *packet = items[i], *message, *pair;
        Py_ssize_t len;

        if (!PyBytes_Check(packet) || PyBytes_GET_SIZE(packet) == 0 ||
            PyBytes_GET_SIZE(packet) > INT_MAX - 2 * PADDING_MULTIPLE) {
            PyErr_SetString(PyExc_ValueError, "seal_run: packets are non-empty bytes");
            goto fail;
        }
        len = PyBytes_GET_SIZE(packet);
        message = seal_message(ctx, header.buf, counter + (unsigned long long)i,
                               (const unsigned char *)PyBytes_AS_STRING(packet), len,
                               padding(len, mtu));
        if (message == NULL)
            goto fail;
        total += PyBytes_GET_SIZE(message);
        pair = PyTuple_Pack(2, message, endpoint);
        Py_DECREF(message);
        if (pair == NULL || PyList_Append(out, pair) < 0) {
            Py_XDECREF(pair);
            goto fail;
        }
        Py_DECREF(pair);
    }
    PyBuffer_Release(&header);
    return PyLong_FromSsize_t(total);
fail:
    PyBuffer_Release(&header);
    PyList_SetSlice(out, start, PyList_GET_SIZE(out), NULL); /* nothing half-done */
    return NULL;
}

/* The plaintext of the message d[0:size] (size >= HEAD_LEN + TAG_LEN) into out: 1 if it
 * authenticates, else 0 (and OpenSSL's error queue left clear). */
static int open_message(EVP_CIPHER_CTX *ctx, const unsigned char *d, Py_ssize_t size,
                        unsigned char *out)
{
    unsigned char nonce[12], tag[TAG_LEN];
    Py_ssize_t n = size - HEAD_LEN - TAG_LEN;
    int len;

    nonce_from_counter(nonce, d + 8);
    memcpy(tag, d + HEAD_LEN + n, TAG_LEN);
    if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, 0) == 1 &&
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, tag) == 1 &&
        (n == 0 || EVP_CipherUpdate(ctx, out, &len, d + HEAD_LEN, (int)n) == 1) &&
        EVP_CipherFinal_ex(ctx, out + n, &len) == 1)
        return 1;
    /* a forgery or a corrupted message. OpenSSL 3.0 queues no error for a wrong tag, but
     * clear anyway: Python's ssl module shares this libcrypto and would report a leftover
     * error as its own */
    ERR_clear_error();
    return 0;
}

static PyObject *transport_key_open(TransportKey *self, PyObject *message)
{
    Py_buffer data;
    EVP_CIPHER_CTX *ctx;
    PyObject *out = NULL;

    ctx = context(self, 0);
    if (ctx == NULL)
        return NULL;
    if (PyObject_GetBuffer(message, &data, PyBUF_SIMPLE) < 0)
        return NULL;
    if (data.len < HEAD_LEN + TAG_LEN || data.len > INT_MAX) {
        PyBuffer_Release(&data);
        Py_RETURN_NONE;
    }
    out = PyBytes_FromStringAndSize(NULL, data.len - HEAD_LEN - TAG_LEN);
    if (out != NULL &&
        !open_message(ctx, data.buf, data.len, (unsigned char *)PyBytes_AS_STRING(out))) {
        Py_SETREF(out, Py_NewRef(Py_None));
    }
    PyBuffer_Release(&data);
    return out;
}

/* --- the anti-replay window (replay.py's PyReplayFilter, line for line) ---------------- */

static int replay_validate(ReplayFilter *r, uint64_t counter, uint64_t limit)
{
    uint64_t block = counter >> 6, current, bit;
    size_t index;

    if (counter >= limit)
        return 0;
    if (counter > r->last) {
        current = r->last >> 6;
        if (block != current) { /* (most packets stay in the newest block: nothing to clear) */
            if (block - current >= REPLAY_BLOCKS)
                memset(r->blocks, 0, sizeof(r->blocks));
            else
                for (uint64_t i = current + 1; i <= block; i++)
                    r->blocks[i % REPLAY_BLOCKS] = 0;
        }
        r->last = counter;
    } else if (r->last - counter > REPLAY_WINDOW) {
        return 0;
    }
    index = (size_t)(block % REPLAY_BLOCKS);
    bit = (uint64_t)1 << (counter & 63);
    if (r->blocks[index] & bit)
        return 0;
    r->blocks[index] |= bit;
    return 1;
}

static PyObject *replay_filter_validate(ReplayFilter *self, PyObject *const *args,
                                        Py_ssize_t nargs)
{
    unsigned long long counter, limit;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "validate(counter, limit)");
        return NULL;
    }
    counter = PyLong_AsUnsignedLongLong(args[0]);
    if (counter == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    limit = PyLong_AsUnsignedLongLong(args[1]);
    if (limit == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    return PyBool_FromLong(replay_validate(self, counter, limit));
}

static PyObject *replay_filter_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) || (kwds != NULL && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "ReplayFilter() takes no arguments");
        return NULL;
    }
    return type->tp_alloc(type, 0); /* zeroed: last 0, every block empty */
}

static void replay_filter_dealloc(ReplayFilter *self)
{
    PyTypeObject *tp = Py_TYPE(self);

    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* --- a run of transport messages for one keypair --------------------------------------- */

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const unsigned char *p)
{
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

/* open_run(batch, start, stop, receiver, replay, limit)
 *     -> (end, packets, authenticated, data, size, source, address, uniform,
 *         failed_open, replayed, bad_inner)
 *
 * batch[start:stop] are (message, source) pairs. From start, while a message is a transport
 * message of at least 32 bytes for `receiver` with a counter below `limit`: open it; count
 * it in failed_open if it does not authenticate, in replayed if `replay` refuses its
 * counter. Each one left is authenticated (their bytes summed in size, source the last
 * one's); those with a plaintext (data) must hold an IPv4 or IPv6 packet whose total length
 * fits (else counted in bad_inner), which is cut to that length and appended to packets.
 * address is the first packet's inner source address, uniform whether every packet has the
 * same. end is where the run stopped: the first message it did not take, or stop. */
static PyObject *transport_key_open_run(TransportKey *self, PyObject *const *args,
                                        Py_ssize_t nargs)
{
    ModuleState *state;
    PyObject *batch, *packets = NULL, *source = Py_None, *address = Py_None, *result = NULL;
    PyObject **items;
    Py_ssize_t start, stop, i, size = 0;
    Py_ssize_t authenticated = 0, data = 0, failed = 0, replayed = 0, bad = 0;
    unsigned long long receiver, limit;
    unsigned char first[16];
    Py_ssize_t first_len = -1;
    int uniform = 1;
    EVP_CIPHER_CTX *ctx;

    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "open_run(batch, start, stop, receiver, replay, limit)");
        return NULL;
    }
    state = PyType_GetModuleState(Py_TYPE(self));
    if (state == NULL)
        return NULL;
    if (!PyObject_TypeCheck(args[4], (PyTypeObject *)state->replay_type)) {
        PyErr_SetString(PyExc_TypeError, "open_run: replay must be this module's ReplayFilter");
        return NULL;
    }
    start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    stop = PyLong_AsSsize_t(args[2]);
    if (stop == -1 && PyErr_Occurred())
        return NULL;
    receiver = PyLong_AsUnsignedLongLong(args[3]);
    if (receiver == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    limit = PyLong_AsUnsignedLongLong(args[5]);
    if (limit == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    ctx = context(self, 0);
    if (ctx == NULL)
        return NULL;
    batch = PySequence_Fast(args[0], "open_run: batch must be a list or a tuple");
    if (batch == NULL)
        return NULL;
    items = PySequence_Fast_ITEMS(batch);
    if (stop > PySequence_Fast_GET_SIZE(batch))
        stop = PySequence_Fast_GET_SIZE(batch);
    if (start < 0)
        start = 0;
    packets = PyList_New(0);
    if (packets == NULL)
        goto done;
    for (i = start; i < stop; i++) {
        PyObject *pair = items[i], *plain;
        Py_buffer message;
        const unsigned char *d, *p, *inner;
        Py_ssize_t n, len, total, inner_len;
        uint64_t counter;
        int ok;

        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2)
            break;
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(pair, 0), &message, PyBUF_SIMPLE) < 0) {
            PyErr_Clear(); /* not ours to judge: the caller's own path takes it */
            break;
        }
        d = message.buf;
        n = message.len;
        if (n < HEAD_LEN + TAG_LEN || n > INT_MAX || le32(d) != TRANSPORT_TYPE ||
            le32(d + 4) != receiver || (counter = le64(d + 8)) >= limit) {
            PyBuffer_Release(&message);
            break;
        }
        len = n - HEAD_LEN - TAG_LEN;
        plain = PyBytes_FromStringAndSize(NULL, len);
        if (plain == NULL) {
            PyBuffer_Release(&message);
            goto done;
        }
        ok = open_message(ctx, d, n, (unsigned char *)PyBytes_AS_STRING(plain));
        PyBuffer_Release(&message);
        if (!ok) {
            failed++;
            Py_DECREF(plain);
            continue;
        }
        if (!replay_validate((ReplayFilter *)args[4], counter, limit)) {
            replayed++;
            Py_DECREF(plain);
            continue;
        }
        authenticated++;
        size += n;
        source = PyTuple_GET_ITEM(pair, 1);
        if (len == 0) { /* a keepalive */
            Py_DECREF(plain);
            continue;
        }
        data++;
        p = (const unsigned char *)PyBytes_AS_STRING(plain);
        if (p[0] >> 4 == 4 && len >= 20) {
            total = (Py_ssize_t)p[2] << 8 | p[3];
            inner = p + 12;
            inner_len = 4;
        } else if (p[0] >> 4 == 6 && len >= 40) {
            total = 40 + ((Py_ssize_t)p[4] << 8 | p[5]);
            inner = p + 8;
            inner_len = 16;
        } else {
            bad++;
            Py_DECREF(plain);
            continue;
        }
        if (total > len || total < 20) {
            bad++;
            Py_DECREF(plain);
            continue;
        }
        if (first_len < 0) {
            memcpy(first, inner, (size_t)inner_len);
            first_len = inner_len;
        } else if (uniform && (inner_len != first_len || memcmp(first, inner, (size_t)inner_len))) {
            uniform = 0;
        }
        if (total != len && _PyBytes_Resize(&plain, total) < 0) /* padding cut in place */
            goto done;
        ok = PyList_Append(packets, plain);
        Py_DECREF(plain);
        if (ok < 0)
            goto done;
    }
    if (first_len >= 0) {
        address = PyBytes_FromStringAndSize((const char *)first, first_len);
        if (address == NULL)
            goto done;
    } else {
        Py_INCREF(address);
    }
    result = Py_BuildValue("(nOnnnONNnnn)", i, packets, authenticated, data, size, source,
                           address, PyBool_FromLong(uniform), failed, replayed, bad);
done:
    Py_XDECREF(packets);
    Py_DECREF(batch);
    return result;
}

static PyMethodDef transport_key_methods[] = {
    {"seal", (PyCFunction)(void (*)(void))transport_key_seal, METH_FASTCALL,
     "seal(header, counter, packet, mtu): the whole transport message for packet."},
    {"open", (PyCFunction)transport_key_open, METH_O,
     "open(message): the plaintext of a whole transport message, or None."},
    {"seal_run", (PyCFunction)(void (*)(void))transport_key_seal_run, METH_FASTCALL,
     "seal_run(header, counter, packets, mtu, endpoint, out): seal each, append to out."},
    {"open_run", (PyCFunction)(void (*)(void))transport_key_open_run, METH_FASTCALL,
     "open_run(batch, start, stop, receiver, replay, limit): a run of one keypair's messages."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot transport_key_slots[] = {
    {Py_tp_doc, "TransportKey(key): one direction's ChaCha20-Poly1305 key, in OpenSSL."},
    {Py_tp_init, transport_key_init},
    {Py_tp_dealloc, transport_key_dealloc},
    {Py_tp_methods, transport_key_methods},
    {0, NULL},
};

static PyType_Spec transport_key_spec = {
    "funnel_tw.wireguard._transport.TransportKey",
    sizeof(TransportKey),
    0,
    Py_TPFLAGS_DEFAULT,
    transport_key_slots,
};

static PyMethodDef replay_filter_methods[] = {
    {"validate", (PyCFunction)(void (*)(void))replay_filter_validate, METH_FASTCALL,
     "validate(counter, limit): True (and remember it) if counter is below limit and new."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot replay_filter_slots[] = {
    {Py_tp_doc, "ReplayFilter(): RFC 6479's anti-replay window, 8128 counters of history."},
    {Py_tp_new, replay_filter_new},
    {Py_tp_dealloc, replay_filter_dealloc},
    {Py_tp_methods, replay_filter_methods},
    {0, NULL},
};

static PyType_Spec replay_filter_spec = {
    "funnel_tw.wireguard._transport.ReplayFilter",
    sizeof(ReplayFilter),
    0,
    Py_TPFLAGS_DEFAULT,
    replay_filter_slots,
};

static int exec_module(PyObject *module)
{
    ModuleState *state = PyModule_GetState(module);
    PyObject *type = PyType_FromModuleAndSpec(module, &transport_key_spec, NULL);

    if (type == NULL)
        return -1;
    if (PyModule_AddObject(module, "TransportKey", type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    state->replay_type = PyType_FromModuleAndSpec(module, &replay_filter_spec, NULL);
    if (state->replay_type == NULL)
        return -1;
    if (PyModule_AddObjectRef(module, "ReplayFilter", state->replay_type) < 0)
        return -1;
    return PyModule_AddStringConstant(module, "OPENSSL_VERSION",
                                      OpenSSL_version(OPENSSL_VERSION));
}

static int module_traverse(PyObject *module, visitproc visit, void *arg)
{
    ModuleState *state = PyModule_GetState(module);

    Py_VISIT(state->replay_type);
    return 0;
}

static int module_clear(PyObject *module)
{
    ModuleState *state = PyModule_GetState(module);

    Py_CLEAR(state->replay_type);
    return 0;
}

static void module_free(void *module)
{
    module_clear((PyObject *)module);
}

static struct PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_transport",
    "WireGuard transport messages sealed and opened with OpenSSL (see transport_key.py).",
    sizeof(ModuleState), NULL, slots, module_traverse, module_clear, module_free,
};

PyMODINIT_FUNC PyInit__transport(void)
{
    return PyModuleDef_Init(&module);
}
