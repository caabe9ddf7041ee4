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

static PyMethodDef methods[] = {
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
