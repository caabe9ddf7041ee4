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
 *   open(message) -> bytes | None
 *       the plaintext of a whole transport message (nonce from its counter field), or None
 *       if it is shorter than 32 bytes or does not authenticate.
 *
 * Same bytes and answers as transport_key.py's PyTransportKey, which
 * tests/wireguard/test_transport_key.py checks on both.
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

static PyObject *transport_key_seal(TransportKey *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const unsigned char zeros[PADDING_MULTIPLE];
    Py_buffer header, packet;
    unsigned long long counter;
    Py_ssize_t mtu, pad;
    unsigned char nonce[12];
    unsigned char *p;
    EVP_CIPHER_CTX *ctx;
    PyObject *out = NULL;
    int len;

    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "seal(header, counter, packet, mtu)");
        return NULL;
    }
    counter = PyLong_AsUnsignedLongLong(args[1]);
    if (counter == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    mtu = PyLong_AsSsize_t(args[3]);
    if (mtu == -1 && PyErr_Occurred())
        return NULL;
    if (mtu < 0) {
        PyErr_SetString(PyExc_ValueError, "seal: mtu must be >= 0");
        return NULL;
    }
    ctx = context(self, 1);
    if (ctx == NULL)
        return NULL;
    if (PyObject_GetBuffer(args[0], &header, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[2], &packet, PyBUF_SIMPLE) < 0)
        goto release_header;
    if (header.len != 8) {
        PyErr_SetString(PyExc_ValueError, "seal: the header is 8 bytes");
        goto release_packet;
    }
    if (packet.len > INT_MAX - 2 * PADDING_MULTIPLE) {
        PyErr_SetString(PyExc_ValueError, "seal: packet too large");
        goto release_packet;
    }
    pad = packet.len ? padding(packet.len, mtu) : 0;
    out = PyBytes_FromStringAndSize(NULL, HEAD_LEN + packet.len + pad + TAG_LEN);
    if (out == NULL)
        goto release_packet;
    p = (unsigned char *)PyBytes_AS_STRING(out);
    memcpy(p, header.buf, 8);
    for (int i = 0; i < 8; i++)
        p[8 + i] = (unsigned char)(counter >> (8 * i));
    nonce_from_counter(nonce, p + 8);
    p += HEAD_LEN;
    if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, 1) != 1 ||
        (packet.len && EVP_CipherUpdate(ctx, p, &len, packet.buf, (int)packet.len) != 1) ||
        (pad && EVP_CipherUpdate(ctx, p + packet.len, &len, zeros, (int)pad) != 1) ||
        EVP_CipherFinal_ex(ctx, p + packet.len + pad, &len) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, p + packet.len + pad) != 1) {
        ERR_clear_error();
        Py_CLEAR(out);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed to seal a packet");
    }
release_packet:
    PyBuffer_Release(&packet);
release_header:
    PyBuffer_Release(&header);
    return out;
}

static PyObject *transport_key_open(TransportKey *self, PyObject *message)
{
    Py_buffer data;
    unsigned char nonce[12], tag[TAG_LEN];
    const unsigned char *d;
    Py_ssize_t n;
    EVP_CIPHER_CTX *ctx;
    PyObject *out = NULL;
    int len, ok;

    ctx = context(self, 0);
    if (ctx == NULL)
        return NULL;
    if (PyObject_GetBuffer(message, &data, PyBUF_SIMPLE) < 0)
        return NULL;
    if (data.len < HEAD_LEN + TAG_LEN || data.len > INT_MAX) {
        PyBuffer_Release(&data);
        Py_RETURN_NONE;
    }
    d = (const unsigned char *)data.buf;
    n = data.len - HEAD_LEN - TAG_LEN;
    nonce_from_counter(nonce, d + 8);
    memcpy(tag, d + HEAD_LEN + n, TAG_LEN);
    out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL)
        goto release;
    ok = EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, 0) == 1 &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, tag) == 1 &&
         (n == 0 || EVP_CipherUpdate(ctx, (unsigned char *)PyBytes_AS_STRING(out), &len,
                                     d + HEAD_LEN, (int)n) == 1) &&
         EVP_CipherFinal_ex(ctx, (unsigned char *)PyBytes_AS_STRING(out) + n, &len) == 1;
    if (!ok) {
        /* a forgery or a corrupted message: no plaintext. OpenSSL 3.0 queues no error for
         * a wrong tag, but clear anyway: Python's ssl module shares this libcrypto and
         * would report a leftover error as its own */
        ERR_clear_error();
        Py_CLEAR(out);
        out = Py_None;
        Py_INCREF(out);
    }
release:
    PyBuffer_Release(&data);
    return out;
}

static PyMethodDef transport_key_methods[] = {
    {"seal", (PyCFunction)(void (*)(void))transport_key_seal, METH_FASTCALL,
     "seal(header, counter, packet, mtu): the whole transport message for packet."},
    {"open", (PyCFunction)transport_key_open, METH_O,
     "open(message): the plaintext of a whole transport message, or None."},
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

static int exec_module(PyObject *module)
{
    PyObject *type = PyType_FromModuleAndSpec(module, &transport_key_spec, NULL);

    if (type == NULL)
        return -1;
    if (PyModule_AddObject(module, "TransportKey", type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return PyModule_AddStringConstant(module, "OPENSSL_VERSION",
                                      OpenSSL_version(OPENSSL_VERSION));
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
    "WireGuard transport messages sealed and opened with OpenSSL (see transport_key.py).", 0,
    NULL, slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__transport(void)
{
    return PyModuleDef_Init(&module);
}
