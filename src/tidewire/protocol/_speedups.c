/*
 * tidewire.protocol._speedups -- C accelerator for the sans-I/O WebSocket core.
 *
 * Three functions, each with a pure-Python twin in _purepy.py that returns
 * exactly the same results (and raises the same exception types):
 *
 *   apply_mask(data, mask, offset=0) -> bytes
 *       XOR data[i] with mask[(i + offset) % 4]  (RFC 6455 section 5.3).
 *
 *   utf8_check(data, state=0) -> int
 *       Incremental, fail-fast, strict (RFC 3629) UTF-8 validation.  `state`
 *       is 0 (on a character boundary), -1 (already invalid) or
 *       (len(pending) << 24) | int.from_bytes(pending, "big") where `pending`
 *       holds the 1..3 leading bytes of a sequence that is valid so far.
 *
 *   utf8_valid(data) -> bool
 *       utf8_check(data) == 0.
 *
 * Buffers are taken with PyBUF_SIMPLE, so any C-contiguous buffer-protocol
 * object is accepted and read as raw bytes.  The GIL is held throughout.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Argument binding for METH_FASTCALL | METH_KEYWORDS                        */
/* ------------------------------------------------------------------------ */

/*
 * Bind positional and keyword arguments to `out` (borrowed references) in
 * the order of `names`.  The first `nrequired` parameters are mandatory;
 * missing optional ones are left NULL.  Returns 0, or -1 with TypeError set.
 */
static int
bind_args(const char *fname, PyObject *const *args, Py_ssize_t nargs,
          PyObject *kwnames, const char *const *names, Py_ssize_t nparams,
          Py_ssize_t nrequired, PyObject **out)
{
    Py_ssize_t i, j, nkw;

    for (i = 0; i < nparams; i++) {
        out[i] = NULL;
    }
    if (nargs > nparams) {
        PyErr_Format(PyExc_TypeError,
                     "%s() takes at most %zd positional arguments (%zd given)",
                     fname, nparams, nargs);
        return -1;
    }
    for (i = 0; i < nargs; i++) {
        out[i] = args[i];
    }
    nkw = (kwnames == NULL) ? 0 : PyTuple_GET_SIZE(kwnames);
    for (i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        for (j = 0; j < nparams; j++) {
            if (PyUnicode_CompareWithASCIIString(key, names[j]) == 0) {
                break;
            }
        }
        if (j == nparams) {
            PyErr_Format(PyExc_TypeError,
                         "%s() got an unexpected keyword argument '%U'",
                         fname, key);
            return -1;
        }
        if (out[j] != NULL) {
            PyErr_Format(PyExc_TypeError,
                         "%s() got multiple values for argument '%s'",
                         fname, names[j]);
            return -1;
        }
        out[j] = args[nargs + i];
    }
    for (i = 0; i < nrequired; i++) {
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError,
                         "%s() missing required argument '%s'", fname, names[i]);
            return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* apply_mask                                                               */
/* ------------------------------------------------------------------------ */

/* Store `operator.index(obj) % 4` (Python semantics, also for negative and
 * arbitrarily large ints) in *out.  NULL means the default, 0. */
static int
offset_mod4(PyObject *obj, unsigned int *out)
{
    PyObject *idx;
    long long value;
    int overflow = 0;

    *out = 0;
    if (obj == NULL) {
        return 0;
    }
    idx = PyNumber_Index(obj);
    if (idx == NULL) {
        return -1;
    }
    value = PyLong_AsLongLongAndOverflow(idx, &overflow);
    if (value == -1 && PyErr_Occurred()) {
        Py_DECREF(idx);
        return -1;
    }
    if (overflow) {
        /* Beyond 64 bits: let Python compute idx & 3 (== idx % 4). */
        PyObject *three = PyLong_FromLong(3);
        PyObject *low = (three == NULL) ? NULL : PyNumber_And(idx, three);
        long bits;

        Py_XDECREF(three);
        Py_DECREF(idx);
        if (low == NULL) {
            return -1;
        }
        bits = PyLong_AsLong(low);
        Py_DECREF(low);
        if (bits == -1 && PyErr_Occurred()) {
            return -1;
        }
        *out = (unsigned int)bits & 3u;
        return 0;
    }
    Py_DECREF(idx);
    /* Conversion to unsigned is modular, so this is value mod 4 for
     * negative values too. */
    *out = (unsigned int)((unsigned long long)value & 3ull);
    return 0;
}

/*
 * out[i] = in[i] ^ m[i & 3] for 0 <= i < n, where m is the already rotated
 * mask.  Works a 64-bit word at a time once the output pointer is aligned;
 * the input may have any alignment (memcpy loads compile to plain moves).
 */
static void
mask_bytes(unsigned char *restrict out, const unsigned char *restrict in,
           Py_ssize_t n, const unsigned char m[4])
{
    Py_ssize_t i = 0;
    unsigned char word_bytes[8];
    uint64_t word;
    int k;

    /* Unaligned head. */
    while (i < n && ((uintptr_t)(out + i) & 7u) != 0) {
        out[i] = in[i] ^ m[i & 3];
        i++;
    }
    if (n - i >= 8) {
        /* 8 is a multiple of 4, so the mask phase is the same for every
         * word: lay the mask bytes out in memory order starting at i. */
        for (k = 0; k < 8; k++) {
            word_bytes[k] = m[(i + k) & 3];
        }
        memcpy(&word, word_bytes, 8);

        for (; n - i >= 32; i += 32) {
            uint64_t a, b, c, d;
            memcpy(&a, in + i, 8);
            memcpy(&b, in + i + 8, 8);
            memcpy(&c, in + i + 16, 8);
            memcpy(&d, in + i + 24, 8);
            a ^= word;
            b ^= word;
            c ^= word;
            d ^= word;
            memcpy(out + i, &a, 8);
            memcpy(out + i + 8, &b, 8);
            memcpy(out + i + 16, &c, 8);
            memcpy(out + i + 24, &d, 8);
        }
        for (; n - i >= 8; i += 8) {
            uint64_t a;
            memcpy(&a, in + i, 8);
            a ^= word;
            memcpy(out + i, &a, 8);
        }
    }
    /* Tail. */
    for (; i < n; i++) {
        out[i] = in[i] ^ m[i & 3];
    }
}

PyDoc_STRVAR(apply_mask_doc,
"apply_mask(data, mask, offset=0)\n"
"--\n"
"\n"
"Return bytes with data[i] XOR mask[(i + offset) % 4] for every byte.\n"
"\n"
"mask must be exactly 4 bytes (ValueError otherwise).  offset lets a frame\n"
"payload be (un)masked in pieces: pass the number of payload bytes already\n"
"processed.");

static PyObject *
speedups_apply_mask(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                    PyObject *kwnames)
{
    static const char *const names[] = {"data", "mask", "offset"};
    PyObject *argv[3];
    Py_buffer data, mask;
    unsigned int rot;
    unsigned char m[4];
    PyObject *result;
    int k;

    (void)module;
    if (bind_args("apply_mask", args, nargs, kwnames, names, 3, 2, argv) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(argv[0], &data, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(argv[1], &mask, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if (mask.len != 4) {
        PyErr_Format(PyExc_ValueError,
                     "mask must be exactly 4 bytes, got %zd", mask.len);
        goto fail;
    }
    if (offset_mod4(argv[2], &rot) < 0) {
        goto fail;
    }
    for (k = 0; k < 4; k++) {
        m[k] = ((const unsigned char *)mask.buf)[(k + rot) & 3u];
    }
    result = PyBytes_FromStringAndSize(NULL, data.len);
    if (result == NULL) {
        goto fail;
    }
    if (data.len > 0) {
        mask_bytes((unsigned char *)PyBytes_AS_STRING(result),
                   (const unsigned char *)data.buf, data.len, m);
    }
    PyBuffer_Release(&mask);
    PyBuffer_Release(&data);
    return result;

fail:
    PyBuffer_Release(&mask);
    PyBuffer_Release(&data);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* UTF-8 validation                                                         */
/* ------------------------------------------------------------------------ */

/*
 * The validator state: `need` continuation bytes are still expected and the
 * next one must lie in [lo, hi].  need == 0 means "on a character boundary".
 * The ranges are those of RFC 3629 section 4 (Unicode table 3-7), which makes
 * the check exact for prefixes: every prefix that passes can be completed.
 */
typedef struct {
    unsigned int need;
    unsigned int lo;
    unsigned int hi;
} utf8_state;

#define HIGH_BITS UINT64_C(0x8080808080808080)

/* Classify a lead byte >= 0x80.  Returns 0 if it can never start a sequence. */
static inline int
utf8_lead(unsigned int c, utf8_state *st)
{
    if (c < 0xC2) {                   /* continuation byte, or C0/C1 overlong */
        return 0;
    }
    if (c < 0xE0) {                   /* C2..DF: U+0080..U+07FF */
        st->need = 1;
        st->lo = 0x80;
        st->hi = 0xBF;
        return 1;
    }
    if (c < 0xF0) {                   /* E0..EF: U+0800..U+FFFF */
        st->need = 2;
        st->lo = (c == 0xE0) ? 0xA0 : 0x80;   /* E0 80..9F is overlong */
        st->hi = (c == 0xED) ? 0x9F : 0xBF;   /* ED A0..BF is a surrogate */
        return 1;
    }
    if (c < 0xF5) {                   /* F0..F4: U+10000..U+10FFFF */
        st->need = 3;
        st->lo = (c == 0xF0) ? 0x90 : 0x80;   /* F0 80..8F is overlong */
        st->hi = (c == 0xF4) ? 0x8F : 0xBF;   /* F4 90.. is above U+10FFFF */
        return 1;
    }
    return 0;                         /* F5..FF */
}

/* Feed one byte.  Returns 0 if the input seen so far became impossible. */
static inline int
utf8_step(utf8_state *st, unsigned int c)
{
    if (st->need == 0) {
        return (c < 0x80) ? 1 : utf8_lead(c, st);
    }
    if (c < st->lo || c > st->hi) {
        return 0;
    }
    st->need--;
    st->lo = 0x80;
    st->hi = 0xBF;
    return 1;
}

/*
 * Run the validator over s[0:n].  Returns 0 as soon as an impossible byte is
 * found (fail-fast), 1 otherwise with *st updated.
 */
static int
utf8_run(utf8_state *st, const unsigned char *s, Py_ssize_t n)
{
    const unsigned char *p = s;
    const unsigned char *end = s + n;

    /* Finish a sequence left over from earlier input. */
    while (st->need != 0 && p < end) {
        if (!utf8_step(st, *p++)) {
            return 0;
        }
    }
    /* Main loop, on a character boundary, while a whole sequence fits.
     * Every pointer advance below is a constant chosen by a (well predicted)
     * branch, never a value computed from the data, so the CPU can run ahead. */
    while (end - p >= 4) {
        unsigned int c = p[0];

        if (c < 0x80) {
            p++;
            /* If the next 8 bytes are ASCII too, go word by word. */
            while (end - p >= 8) {
                uint64_t w;
                memcpy(&w, p, 8);
                if (w & HIGH_BITS) {
                    /* Stops within these 8 bytes: one of them is >= 0x80. */
                    while (*p < 0x80) {
                        p++;
                    }
                    break;
                }
                p += 8;
                while (end - p >= 32) {
                    uint64_t a, b, c4, d;
                    memcpy(&a, p, 8);
                    memcpy(&b, p + 8, 8);
                    memcpy(&c4, p + 16, 8);
                    memcpy(&d, p + 24, 8);
                    if ((a | b | c4 | d) & HIGH_BITS) {
                        break;
                    }
                    p += 32;
                }
            }
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {                 /* U+0080..U+07FF */
            if ((p[1] & 0xC0) != 0x80) {
                return 0;
            }
            p += 2;
        }
        else if ((c & 0xF0) == 0xE0) {                /* U+0800..U+FFFF */
            unsigned int lo = (c == 0xE0) ? 0xA0 : 0x80;
            unsigned int hi = (c == 0xED) ? 0x9F : 0xBF;
            if (p[1] < lo || p[1] > hi || (p[2] & 0xC0) != 0x80) {
                return 0;
            }
            p += 3;
        }
        else if (c >= 0xF0 && c <= 0xF4) {            /* U+10000..U+10FFFF */
            unsigned int lo = (c == 0xF0) ? 0x90 : 0x80;
            unsigned int hi = (c == 0xF4) ? 0x8F : 0xBF;
            if (p[1] < lo || p[1] > hi || (p[2] & 0xC0) != 0x80
                || (p[3] & 0xC0) != 0x80) {
                return 0;
            }
            p += 4;
        }
        else {                                        /* 80..C1, F5..FF */
            return 0;
        }
    }
    /* The last few bytes, one at a time. */
    while (p < end) {
        if (!utf8_step(st, *p++)) {
            return 0;
        }
    }
    return 1;
}

/* Parse a `state` argument.  Returns 1 for -1 ("already invalid"), 0 with the
 * pending bytes filled in otherwise, -1 with an exception set. */
static int
utf8_parse_state(PyObject *obj, unsigned char pending[3], int *plen)
{
    PyObject *idx;
    long long value;
    int overflow = 0;
    int len, k;
    utf8_state st = {0, 0x80, 0xBF};

    *plen = 0;
    if (obj == NULL) {
        return 0;
    }
    idx = PyNumber_Index(obj);
    if (idx == NULL) {
        return -1;
    }
    value = PyLong_AsLongLongAndOverflow(idx, &overflow);
    Py_DECREF(idx);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow) {
        goto invalid;
    }
    if (value == -1) {
        return 1;
    }
    if (value == 0) {
        return 0;
    }
    if (value < 0) {
        goto invalid;
    }
    len = (int)(value >> 24);
    if (len < 1 || len > 3) {
        goto invalid;
    }
    if (((unsigned long long)value & 0xFFFFFFull) >> (8 * len) != 0) {
        goto invalid;
    }
    for (k = 0; k < len; k++) {
        pending[k] = (unsigned char)((unsigned long long)value >> (8 * (len - 1 - k)));
        /* Every pending byte must be accepted and leave the sequence open. */
        if (!utf8_step(&st, pending[k]) || st.need == 0) {
            goto invalid;
        }
    }
    *plen = len;
    return 0;

invalid:
    PyErr_SetString(PyExc_ValueError, "invalid UTF-8 validator state");
    return -1;
}

PyDoc_STRVAR(utf8_check_doc,
"utf8_check(data, state=0)\n"
"--\n"
"\n"
"Validate one more chunk of a UTF-8 stream, strictly (RFC 3629).\n"
"\n"
"Return -1 as soon as the bytes seen so far cannot start valid UTF-8,\n"
"0 when they end on a character boundary, otherwise the state to pass with\n"
"the next chunk: (len(pending) << 24) | int.from_bytes(pending, 'big').\n"
"A state of -1 returns -1.");

/* Validate s[0:n] continuing from the Python-level state object; returns the
 * new state as a Python int (-1 invalid), or NULL with an exception set. */
static PyObject *
utf8_check_run(PyObject *state_obj, const unsigned char *s, Py_ssize_t n)
{
    unsigned char pending[3];
    int plen, rc, k;
    utf8_state st = {0, 0x80, 0xBF};
    Py_ssize_t tail;
    unsigned long value;

    rc = utf8_parse_state(state_obj, pending, &plen);
    if (rc < 0) {
        return NULL;
    }
    if (rc == 1) {
        return PyLong_FromLong(-1);
    }
    for (k = 0; k < plen; k++) {
        (void)utf8_step(&st, pending[k]);     /* validated by the parser */
    }
    if (!utf8_run(&st, s, n)) {
        return PyLong_FromLong(-1);
    }
    if (st.need == 0) {
        return PyLong_FromLong(0);
    }
    /* Open sequence: it is the trailing continuation bytes of data plus the
     * lead before them, or (if data holds no lead) the old pending bytes
     * followed by all of data.  At most 3 bytes in total. */
    tail = 0;
    while (tail < n && tail < 3 && (s[n - 1 - tail] & 0xC0) == 0x80) {
        tail++;
    }
    value = 0;
    if (tail < n) {
        tail++;                                /* include the lead byte */
        for (k = 0; k < (int)tail; k++) {
            value = (value << 8) | s[n - tail + k];
        }
        rc = (int)tail;
    }
    else {
        for (k = 0; k < plen; k++) {
            value = (value << 8) | pending[k];
        }
        for (k = 0; k < (int)n; k++) {
            value = (value << 8) | s[k];
        }
        rc = plen + (int)n;
    }
    return PyLong_FromUnsignedLong(((unsigned long)rc << 24) | value);
}

static PyObject *
speedups_utf8_check(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                    PyObject *kwnames)
{
    static const char *const names[] = {"data", "state"};
    PyObject *argv[2];
    Py_buffer view;
    PyObject *result;

    (void)module;
    if (bind_args("utf8_check", args, nargs, kwnames, names, 2, 1, argv) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(argv[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    result = utf8_check_run(argv[1], (const unsigned char *)view.buf, view.len);
    PyBuffer_Release(&view);
    return result;
}

PyDoc_STRVAR(utf8_valid_doc,
"utf8_valid(data)\n"
"--\n"
"\n"
"Return True if data is complete, strictly valid UTF-8 (RFC 3629).");

static PyObject *
speedups_utf8_valid(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                    PyObject *kwnames)
{
    static const char *const names[] = {"data"};
    PyObject *argv[1];
    Py_buffer view;
    utf8_state st = {0, 0x80, 0xBF};
    int ok;

    (void)module;
    if (bind_args("utf8_valid", args, nargs, kwnames, names, 1, 1, argv) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(argv[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    ok = utf8_run(&st, (const unsigned char *)view.buf, view.len) && st.need == 0;
    PyBuffer_Release(&view);
    return PyBool_FromLong(ok);
}


/* ------------------------------------------------------------------------ */
/* Frame parsing: the common case in C                                      */
/* ------------------------------------------------------------------------ */

PyDoc_STRVAR(parse_frames_doc,
"parse_frames(buf, pos, masked, limit)\n"
"--\n"
"\n"
"Parse complete, unfragmented, uncompressed text and binary frames.\n"
"\n"
"Starting at pos, take every frame with FIN set, RSV bits clear, opcode 1\n"
"or 2, the mask bit equal to masked, a payload length <= limit (limit < 0:\n"
"no limit) and its whole payload in buf.  Text payloads are decoded as\n"
"strict UTF-8.  Stops at the first frame that does not qualify (incomplete,\n"
"control, fragmented, compressed, too long, or invalid UTF-8), leaving it\n"
"to the caller.  Returns (list of str or bytes, new pos).");

#define SMALL_PAYLOAD 512

static PyObject *
speedups_parse_frames(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Py_ssize_t pos, limit, n;
    int masked;
    const unsigned char *p;
    PyObject *items, *item, *result;
    unsigned char small[SMALL_PAYLOAD];

    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "parse_frames() takes exactly 4 arguments");
        return NULL;
    }
    pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    masked = PyObject_IsTrue(args[2]);
    if (masked < 0) {
        return NULL;
    }
    limit = PyLong_AsSsize_t(args[3]);
    if (limit == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    n = view.len;
    if (pos < 0 || pos > n) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "pos out of range");
        return NULL;
    }
    p = (const unsigned char *)view.buf;
    items = PyList_New(0);
    if (items == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    while (n - pos >= 2) {
        unsigned int b0 = p[pos], b1 = p[pos + 1], op;
        uint64_t len;
        Py_ssize_t hl = 2, start;
        const unsigned char *payload;

        if ((b0 & 0xF0u) != 0x80u) {
            break;  /* FIN clear or RSV set */
        }
        op = b0 & 0x0Fu;
        if (op != 1u && op != 2u) {
            break;
        }
        if (((b1 & 0x80u) != 0) != (masked != 0)) {
            break;
        }
        len = b1 & 0x7Fu;
        if (len == 126u) {
            if (n - pos < 4) {
                break;
            }
            len = ((uint64_t)p[pos + 2] << 8) | p[pos + 3];
            hl = 4;
        }
        else if (len == 127u) {
            int k;
            if (n - pos < 10) {
                break;
            }
            len = 0;
            for (k = 0; k < 8; k++) {
                len = (len << 8) | p[pos + 2 + k];
            }
            if (len >> 63) {
                break;
            }
            hl = 10;
        }
        if (masked) {
            hl += 4;
        }
        if (n - pos < hl) {
            break;
        }
        if (limit >= 0 && len > (uint64_t)limit) {
            break;
        }
        if (len > (uint64_t)(n - pos - hl)) {
            break;
        }
        start = pos + hl;
        payload = p + start;
        if (op == 1u) {
            if (masked) {
                unsigned char *tmp = small;
                PyObject *holder = NULL;
                if (len > SMALL_PAYLOAD) {
                    holder = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
                    if (holder == NULL) {
                        goto error;
                    }
                    tmp = (unsigned char *)PyBytes_AS_STRING(holder);
                }
                mask_bytes(tmp, payload, (Py_ssize_t)len, p + start - 4);
                item = PyUnicode_DecodeUTF8((const char *)tmp, (Py_ssize_t)len, NULL);
                Py_XDECREF(holder);
            }
            else {
                item = PyUnicode_DecodeUTF8((const char *)payload, (Py_ssize_t)len, NULL);
            }
            if (item == NULL) {
                if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                    PyErr_Clear();
                    break;  /* the caller reports 1007 */
                }
                goto error;
            }
        }
        else {
            item = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
            if (item == NULL) {
                goto error;
            }
            if (masked) {
                mask_bytes((unsigned char *)PyBytes_AS_STRING(item), payload,
                           (Py_ssize_t)len, p + start - 4);
            }
            else if (len) {
                memcpy(PyBytes_AS_STRING(item), payload, (size_t)len);
            }
        }
        if (PyList_Append(items, item) < 0) {
            Py_DECREF(item);
            goto error;
        }
        Py_DECREF(item);
        pos = start + (Py_ssize_t)len;
    }
    PyBuffer_Release(&view);
    result = Py_BuildValue("(Nn)", items, pos);
    return result;

error:
    PyBuffer_Release(&view);
    Py_DECREF(items);
    return NULL;
}

PyDoc_STRVAR(unmask_into_doc,
"unmask_into(dest, dest_offset, data, mask, offset, utf8_state=None)\n"
"--\n"
"\n"
"Write data XOR mask (rotated by offset) into the writable buffer dest at\n"
"dest_offset; mask None copies data unchanged.  Raises ValueError when it\n"
"does not fit.  Returns None, or with utf8_state given, the utf8_check state\n"
"after validating the bytes written.");

static PyObject *
speedups_unmask_into(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer dest, data, mask;
    Py_ssize_t off;
    unsigned int rot;
    unsigned char m[4];
    int k, has_mask;

    (void)module;
    if (nargs != 5 && nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "unmask_into() takes 5 or 6 arguments");
        return NULL;
    }
    off = PyLong_AsSsize_t(args[1]);
    if (off == -1 && PyErr_Occurred()) {
        return NULL;
    }
    has_mask = args[3] != Py_None;
    if (has_mask && offset_mod4(args[4], &rot) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &dest, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[2], &data, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&dest);
        return NULL;
    }
    if (off < 0 || data.len > dest.len - off) {
        PyErr_SetString(PyExc_ValueError, "unmask_into: data does not fit in dest");
        goto fail;
    }
    if (has_mask) {
        if (PyObject_GetBuffer(args[3], &mask, PyBUF_SIMPLE) < 0) {
            goto fail;
        }
        if (mask.len != 4) {
            PyBuffer_Release(&mask);
            PyErr_Format(PyExc_ValueError, "mask must be exactly 4 bytes, got %zd", mask.len);
            goto fail;
        }
        for (k = 0; k < 4; k++) {
            m[k] = ((const unsigned char *)mask.buf)[(k + rot) & 3u];
        }
        PyBuffer_Release(&mask);
        if (data.len) {
            mask_bytes((unsigned char *)dest.buf + off, (const unsigned char *)data.buf,
                       data.len, m);
        }
    }
    else if (data.len) {
        memcpy((unsigned char *)dest.buf + off, data.buf, (size_t)data.len);
    }
    if (nargs == 6 && args[5] != Py_None) {
        PyObject *state = utf8_check_run(args[5], (const unsigned char *)dest.buf + off,
                                         data.len);
        PyBuffer_Release(&data);
        PyBuffer_Release(&dest);
        return state;
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&dest);
    Py_RETURN_NONE;

fail:
    PyBuffer_Release(&data);
    PyBuffer_Release(&dest);
    return NULL;
}


/* ------------------------------------------------------------------------ */
/* Assembler: a large message unmasked straight into its final object       */
/* ------------------------------------------------------------------------ */

/*
 * Binary messages are written into a bytes object allocated up front; text
 * messages into an ASCII str allocated up front, falling back to a bytearray
 * (validated incrementally, decoded at the end) at the first non-ASCII byte.
 * The object is never visible to Python before finish(), so filling it in
 * place is safe.  One pass over the payload instead of three.
 */
typedef struct {
    PyObject_HEAD
    PyObject *obj;        /* bytes, str (ASCII) or bytearray (UTF-8 fallback) */
    PyObject *state;      /* utf8_check state (Python int) for the fallback */
    Py_ssize_t size;
    Py_ssize_t filled;
    int mode;             /* 0 binary, 1 ascii str, 2 utf-8 bytearray */
} AssemblerObject;

static void
assembler_dealloc(AssemblerObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    Py_CLEAR(self->obj);
    Py_CLEAR(self->state);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
assembler_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Py_ssize_t size;
    int text;
    static char *kwlist[] = {"size", "text", NULL};
    AssemblerObject *self;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "np:Assembler", kwlist, &size, &text)) {
        return NULL;
    }
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "Assembler: negative size");
        return NULL;
    }
    self = (AssemblerObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->size = size;
    self->filled = 0;
    self->mode = text ? 1 : 0;
    self->state = PyLong_FromLong(0);
    self->obj = text ? PyUnicode_New(size, 127) : PyBytes_FromStringAndSize(NULL, size);
    if (self->obj == NULL || self->state == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static unsigned char *
assembler_data(AssemblerObject *self)
{
    if (self->mode == 0) {
        return (unsigned char *)PyBytes_AS_STRING(self->obj);
    }
    if (self->mode == 1) {
        return (unsigned char *)PyUnicode_1BYTE_DATA(self->obj);
    }
    return (unsigned char *)PyByteArray_AS_STRING(self->obj);
}

static int
has_high_bit(const unsigned char *p, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    uint64_t acc = 0, w;
    for (; n - i >= 8; i += 8) {
        memcpy(&w, p + i, 8);
        acc |= w;
    }
    if (acc & HIGH_BITS) {
        return 1;
    }
    for (; i < n; i++) {
        if (p[i] & 0x80u) {
            return 1;
        }
    }
    return 0;
}

PyDoc_STRVAR(assembler_feed_doc,
"feed(data, mask, offset)\n"
"--\n"
"\n"
"Append data XOR mask (rotated by offset; mask None: unchanged).  Returns\n"
"False as soon as a text message cannot be valid UTF-8, else True.");

static PyObject *
assembler_feed(AssemblerObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data, mask;
    unsigned int rot = 0;
    unsigned char m[4];
    unsigned char *dest;
    Py_ssize_t off;
    int k, has_mask;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "feed() takes exactly 3 arguments");
        return NULL;
    }
    if (self->obj == NULL) {
        PyErr_SetString(PyExc_ValueError, "Assembler already finished");
        return NULL;
    }
    has_mask = args[1] != Py_None;
    if (has_mask && offset_mod4(args[2], &rot) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (data.len > self->size - self->filled) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "Assembler: more data than the declared size");
        return NULL;
    }
    if (has_mask) {
        if (PyObject_GetBuffer(args[1], &mask, PyBUF_SIMPLE) < 0) {
            PyBuffer_Release(&data);
            return NULL;
        }
        if (mask.len != 4) {
            PyBuffer_Release(&mask);
            PyBuffer_Release(&data);
            PyErr_Format(PyExc_ValueError, "mask must be exactly 4 bytes, got %zd", mask.len);
            return NULL;
        }
        for (k = 0; k < 4; k++) {
            m[k] = ((const unsigned char *)mask.buf)[(k + rot) & 3u];
        }
        PyBuffer_Release(&mask);
    }
    off = self->filled;
    dest = assembler_data(self) + off;
    if (data.len) {
        if (has_mask) {
            mask_bytes(dest, (const unsigned char *)data.buf, data.len, m);
        }
        else {
            memcpy(dest, data.buf, (size_t)data.len);
        }
    }
    PyBuffer_Release(&data);
    self->filled = off + data.len;
    if (self->mode == 1 && has_high_bit(dest, self->filled - off)) {
        /* Not ASCII after all: move what we have into a bytearray. */
        PyObject *ba = PyByteArray_FromStringAndSize(NULL, self->size);
        if (ba == NULL) {
            return NULL;
        }
        memcpy(PyByteArray_AS_STRING(ba), PyUnicode_1BYTE_DATA(self->obj),
               (size_t)self->filled);
        Py_SETREF(self->obj, ba);
        self->mode = 2;
    }
    if (self->mode == 2) {
        PyObject *state = utf8_check_run(self->state, assembler_data(self) + off,
                                         self->filled - off);
        if (state == NULL) {
            return NULL;
        }
        Py_SETREF(self->state, state);
        if (PyLong_AsLong(state) < 0) {
            Py_RETURN_FALSE;
        }
    }
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(assembler_finish_doc,
"finish()\n"
"--\n"
"\n"
"Return the message (str for text, bytes for binary) once every byte was\n"
"fed; None for text that ends inside a UTF-8 sequence.");

static PyObject *
assembler_finish(AssemblerObject *self, PyObject *unused)
{
    PyObject *result;

    (void)unused;
    if (self->obj == NULL) {
        PyErr_SetString(PyExc_ValueError, "Assembler already finished");
        return NULL;
    }
    if (self->filled != self->size) {
        PyErr_Format(PyExc_ValueError, "Assembler: %zd of %zd bytes fed",
                     self->filled, self->size);
        return NULL;
    }
    if (self->mode == 2) {
        long st = PyLong_AsLong(self->state);
        if (st != 0) {
            Py_CLEAR(self->obj);
            if (st == -1 && PyErr_Occurred()) {
                return NULL;
            }
            Py_RETURN_NONE;
        }
        result = PyUnicode_DecodeUTF8(PyByteArray_AS_STRING(self->obj), self->size, NULL);
        Py_CLEAR(self->obj);
        return result;
    }
    result = self->obj;
    self->obj = NULL;
    return result;
}

static PyMethodDef assembler_methods[] = {
    {"feed", (PyCFunction)(void (*)(void))assembler_feed, METH_FASTCALL, assembler_feed_doc},
    {"finish", (PyCFunction)assembler_finish, METH_NOARGS, assembler_finish_doc},
    {NULL, NULL, 0, NULL}
};

PyDoc_STRVAR(assembler_doc,
"Assembler(size, text)\n"
"--\n"
"\n"
"Collects one message of known size, unmasking into its final object.");

static PyType_Slot assembler_slots[] = {
    {Py_tp_new, assembler_new},
    {Py_tp_dealloc, assembler_dealloc},
    {Py_tp_methods, assembler_methods},
    {Py_tp_doc, (void *)assembler_doc},
    {0, NULL}
};

static PyType_Spec assembler_spec = {
    "tidewire.protocol._speedups.Assembler",
    sizeof(AssemblerObject),
    0,
    Py_TPFLAGS_DEFAULT,
    assembler_slots
};

static int
speedups_exec(PyObject *module)
{
    PyObject *type = PyType_FromModuleAndSpec(module, &assembler_spec, NULL);
    if (type == NULL) {
        return -1;
    }
    if (PyModule_AddObject(module, "Assembler", type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Module                                                                   */
/* ------------------------------------------------------------------------ */

static PyMethodDef speedups_methods[] = {
    {"apply_mask", (PyCFunction)(void (*)(void))speedups_apply_mask,
     METH_FASTCALL | METH_KEYWORDS, apply_mask_doc},
    {"utf8_check", (PyCFunction)(void (*)(void))speedups_utf8_check,
     METH_FASTCALL | METH_KEYWORDS, utf8_check_doc},
    {"utf8_valid", (PyCFunction)(void (*)(void))speedups_utf8_valid,
     METH_FASTCALL | METH_KEYWORDS, utf8_valid_doc},
    {"parse_frames", (PyCFunction)(void (*)(void))speedups_parse_frames,
     METH_FASTCALL, parse_frames_doc},
    {"unmask_into", (PyCFunction)(void (*)(void))speedups_unmask_into,
     METH_FASTCALL, unmask_into_doc},
    {NULL, NULL, 0, NULL}
};

static PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, (void *)speedups_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#if PY_VERSION_HEX >= 0x030D0000
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL}
};

PyDoc_STRVAR(speedups_doc,
"C accelerator for tidewire.protocol: WebSocket masking and UTF-8 checks.\n"
"\n"
"Use tidewire.protocol._accel rather than importing this module directly.");

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    "tidewire.protocol._speedups",
    speedups_doc,
    0,
    speedups_methods,
    speedups_slots,
    NULL,
    NULL,
    NULL
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
