/* The per-container `start` of a pod, answered by the native launcher:
 * when a live shim already serves the container's group, `start` only
 * writes the bundle's address file and prints the address (containerd
 * 1.6-2.2) or a BootstrapResult (2.3+). shim/manager.py's do_start does
 * the same; this file mirrors it step by step:
 *
 *   stdin     an Any (runtime options), nothing, or containerd 2.3's
 *             BootstrapParams (taken as such only when its instance_id and
 *             namespace are -id and -namespace; its socket_dir is used)
 *   group     config.json's annotation io.containerd.runc.v2.group, else
 *             io.kubernetes.cri.sandbox-id, else the container id
 *   socket    <socket dir>/<sha256 hex of filepath.Join(address, ns, group)>
 *   live      someone accepts a connection on it
 *
 * Anything it is not sure of (odd stdin, JSON it does not read exactly as
 * Python does, no live shim) returns -1 with stdin holding the same bytes
 * as before: the template or the Python launcher then decides. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "launcher.h"

#define SOCKET_DIR "/run/containerd/s"
#define SPEC_MAX (16 << 20)
#define VALUE_MAX 4096
#define JSON_DEPTH 200
#define TASK_API_VERSION 3

/* ---- SHA-256 (FIPS 180-4) --------------------------------------------- */

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(uint32_t h[8], const unsigned char *p)
{
    uint32_t w[64], a, b, c, d, e, f, g, k;
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
}

static void sha256_hex(const unsigned char *data, size_t len, char out[65])
{
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    unsigned char tail[128];
    size_t full = len & ~(size_t)63, rest = len - full;
    for (size_t off = 0; off < full; off += 64)
        sha256_block(h, data + off);
    memset(tail, 0, sizeof tail);
    memcpy(tail, data + full, rest);
    tail[rest] = 0x80;
    size_t tl = rest < 56 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++)
        tail[tl - 1 - i] = (unsigned char)(bits >> (8 * i));
    for (size_t off = 0; off < tl; off += 64)
        sha256_block(h, tail + off);
    for (int i = 0; i < 8; i++)
        snprintf(out + 8 * i, 9, "%08x", h[i]);
}

/* ---- bytes ------------------------------------------------------------- */

struct bytes {
    unsigned char *p;
    size_t len;
};

/* Well-formed UTF-8 (no surrogates, no overlongs), as Python's decoder. */
static int utf8_ok(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            k = 1, cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            k = 2, cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            k = 3, cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + k >= n)
            return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += k + 1;
    }
    return 1;
}

/* ---- stdin: read it, and put the same bytes back for whoever is next ----- */

/* All of stdin, as Python's start reads it (a terminal: nothing; a read
 * error: what came before it). -1 only when memory runs out. */
static int read_stdin(struct bytes *b)
{
    b->p = NULL;
    b->len = 0;
    if (isatty(0))
        return 0;
    size_t cap = 0;
    for (;;) {
        if (b->len == cap) {
            cap = cap ? cap * 2 : 4096;
            unsigned char *p = realloc(b->p, cap);
            if (!p)
                return -1;
            b->p = p;
        }
        ssize_t r = read(0, b->p + b->len, cap - b->len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return 0;
        b->len += (size_t)r;
    }
}

/* stdin as read: a memfd (a pipe where there is none) holding the bytes,
 * as fd 0. What was read once cannot be unread. */
static int restore_stdin(const struct bytes *b)
{
    if (!b->len)
        return 0;           /* at EOF already: whoever reads next gets EOF too */
    int fd = memfd_create("pyshim-start-stdin", 0);
    if (fd >= 0) {
        if (write_full(fd, b->p, b->len) == b->len && lseek(fd, 0, SEEK_SET) == 0 &&
            dup2(fd, 0) == 0) {
            close(fd);
            return 0;
        }
        close(fd);
    }
    return -1;
}

/* ---- protobuf: just enough to tell BootstrapParams from an Any ----------- */

struct pb {
    const unsigned char *p, *end;
};

static int pb_varint(struct pb *m, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (m->p >= m->end)
            return -1;
        unsigned char c = *m->p++;
        *v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80))
            return 0;
    }
    return -1;
}

/* 1: a field (num, wire type; a LEN's bytes in val/len); 0: end; -1: bad. */
static int pb_next(struct pb *m, uint64_t *num, int *wt, const unsigned char **val, size_t *len)
{
    if (m->p >= m->end)
        return 0;
    uint64_t key, v;
    if (pb_varint(m, &key) || (key >> 3) == 0)
        return -1;
    *num = key >> 3;
    *wt = (int)(key & 7);
    switch (*wt) {
    case 0:
        return pb_varint(m, &v) ? -1 : 1;
    case 1:
        if (m->end - m->p < 8)
            return -1;
        m->p += 8;
        return 1;
    case 5:
        if (m->end - m->p < 4)
            return -1;
        m->p += 4;
        return 1;
    case 2:
        if (pb_varint(m, &v) || v > (uint64_t)(m->end - m->p))
            return -1;
        *val = m->p;
        *len = (size_t)v;
        m->p += v;
        return 1;
    default:
        return -1;          /* groups: neither message has them */
    }
}

/* An Any: type_url (1, a string) and value (2, bytes); other fields skipped.
 * 1: it reads as one; 0: it does not. */
static int pb_is_any(const unsigned char *p, size_t n)
{
    struct pb m = {p, p + n};
    uint64_t num;
    int wt, r;
    const unsigned char *val;
    size_t len;
    while ((r = pb_next(&m, &num, &wt, &val, &len)) == 1) {
        if ((num == 1 || num == 2) && wt != 2)
            return 0;
        if (num == 1 && !utf8_ok(val, len))
            return 0;
    }
    return r == 0;
}

struct bootstrap {
    int is;                         /* instance_id and namespace are ours */
    const unsigned char *socket_dir;
    size_t socket_dir_len;
};

/* 0: stdin understood (an Any, nothing, or BootstrapParams: see b->is);
 * -1: anything else (Python will say what is wrong with it). */
static int read_start_input(const struct bytes *in, const struct cmd *c, struct bootstrap *b)
{
    memset(b, 0, sizeof *b);
    if (!in->len)
        return 0;
    struct pb m = {in->p, in->p + in->len};
    uint64_t num;
    int wt, r, well_typed = 1;
    const unsigned char *val, *id = NULL, *ns = NULL, *dir = NULL;
    size_t len, id_len = 0, ns_len = 0, dir_len = 0;
    while ((r = pb_next(&m, &num, &wt, &val, &len)) == 1) {
        int want = num == 3 ? 0 : 2;           /* log_level: an enum */
        if (num > 9) {
            continue;
        } else if (wt != want) {
            well_typed = 0;
        } else if (num == 8) {
            /* Extension { Any value = 1; } */
            struct pb e = {val, val + len};
            uint64_t en;
            int ewt, er;
            const unsigned char *ev;
            size_t el;
            while ((er = pb_next(&e, &en, &ewt, &ev, &el)) == 1)
                if (en == 1 && (ewt != 2 || !pb_is_any(ev, el)))
                    well_typed = 0;
            if (er != 0)
                well_typed = 0;
        } else if (want == 2 && !utf8_ok(val, len)) {
            well_typed = 0;
        } else if (num == 1) {
            id = val, id_len = len;
        } else if (num == 2) {
            ns = val, ns_len = len;
        } else if (num == 9) {
            dir = val, dir_len = len;
        }
    }
    if (r != 0)
        return -1;
    int ours = c->id && c->id[0] && id && id_len == strlen(c->id) &&
               memcmp(id, c->id, id_len) == 0 && ns && ns_len == strlen(c->namespace) &&
               memcmp(ns, c->namespace, ns_len) == 0;
    if (ours && well_typed) {
        b->is = 1;
        b->socket_dir = dir;
        b->socket_dir_len = dir_len;
        return 0;
    }
    if (ours)
        return -1;          /* ours but odd: how Python reads that is its call */
    return pb_is_any(in->p, in->len) ? 0 : -1;
}

/* ---- config.json: the two grouping annotations ---------------------------- */

struct js {
    const unsigned char *p, *end;
    int depth;
};

static void js_ws(struct js *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static int hex4(const unsigned char *p, uint32_t *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i];
        *v <<= 4;
        if (c >= '0' && c <= '9')
            *v |= c - '0';
        else if (c >= 'a' && c <= 'f')
            *v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            *v |= c - 'A' + 10;
        else
            return -1;
    }
    return 0;
}

static int put_utf8(unsigned char *out, size_t cap, size_t *n, uint32_t cp)
{
    unsigned char b[4];
    size_t k;
    if (cp < 0x80)
        b[0] = (unsigned char)cp, k = 1;
    else if (cp < 0x800)
        b[0] = (unsigned char)(0xc0 | cp >> 6), b[1] = (unsigned char)(0x80 | (cp & 0x3f)), k = 2;
    else if (cp < 0x10000)
        b[0] = (unsigned char)(0xe0 | cp >> 12), b[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f)),
        b[2] = (unsigned char)(0x80 | (cp & 0x3f)), k = 3;
    else
        b[0] = (unsigned char)(0xf0 | cp >> 18), b[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f)),
        b[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f)), b[3] = (unsigned char)(0x80 | (cp & 0x3f)),
        k = 4;
    if (out) {
        if (*n + k > cap)
            return -1;
        memcpy(out + *n, b, k);
    }
    *n += k;
    return 0;
}

/* A string at j->p (the opening quote), decoded into out (cap bytes; NULL:
 * only checked). -1: not a string Python reads the same, or longer than cap
 * (a lone surrogate escape is refused: Python would keep it, unencodable). */
static int js_string(struct js *j, unsigned char *out, size_t cap, size_t *n)
{
    *n = 0;
    if (j->p >= j->end || *j->p != '"')
        return -1;
    j->p++;
    const unsigned char *run = j->p;
    while (j->p < j->end) {
        unsigned c = *j->p;
        if (c == '"' || c == '\\' || c < 0x20) {
            size_t rl = (size_t)(j->p - run);
            if (!utf8_ok(run, rl))
                return -1;
            if (out) {
                if (*n + rl > cap)
                    return -1;
                memcpy(out + *n, run, rl);
            }
            *n += rl;
            if (c < 0x20)
                return -1;
            if (c == '"') {
                j->p++;
                return 0;
            }
            if (j->end - j->p < 2)
                return -1;
            unsigned e = j->p[1];
            uint32_t cp;
            j->p += 2;
            switch (e) {
            case '"': cp = '"'; break;
            case '\\': cp = '\\'; break;
            case '/': cp = '/'; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u':
                if (j->end - j->p < 4 || hex4(j->p, &cp))
                    return -1;
                j->p += 4;
                if (cp >= 0xdc00 && cp <= 0xdfff)
                    return -1;
                if (cp >= 0xd800 && cp <= 0xdbff) {
                    uint32_t lo;
                    if (j->end - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u' ||
                        hex4(j->p + 2, &lo) || lo < 0xdc00 || lo > 0xdfff)
                        return -1;
                    j->p += 6;
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                }
                break;
            default:
                return -1;
            }
            if (put_utf8(out, cap, n, cp))
                return -1;
            run = j->p;
            continue;
        }
        j->p++;
    }
    return -1;
}

static int js_value(struct js *j);

static int js_number(struct js *j)
{
    const unsigned char *s = j->p;
    if (j->p < j->end && *j->p == '-')
        j->p++;
    if (j->p >= j->end || *j->p < '0' || *j->p > '9')
        return -1;          /* NaN, Infinity: Python's, not ours to guess */
    if (*j->p == '0')
        j->p++;
    else
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
            j->p++;
    if (j->p < j->end && *j->p == '.') {
        j->p++;
        if (j->p >= j->end || *j->p < '0' || *j->p > '9')
            return -1;
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
            j->p++;
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        j->p++;
        if (j->p < j->end && (*j->p == '+' || *j->p == '-'))
            j->p++;
        if (j->p >= j->end || *j->p < '0' || *j->p > '9')
            return -1;
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
            j->p++;
    }
    return j->p > s ? 0 : -1;
}

static int js_literal(struct js *j, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0)
        return -1;
    j->p += n;
    return 0;
}

/* After `{` or `[` (at j->p), and after each member or element: 1 when
 * the container goes on, 0 when `close` ended it, -1 when neither. */
static int js_open(struct js *j, char close)
{
    if (++j->depth > JSON_DEPTH)
        return -1;
    j->p++;
    js_ws(j);
    if (j->p < j->end && *j->p == close) {
        j->p++;
        j->depth--;
        return 0;
    }
    return 1;
}

static int js_next(struct js *j, char close)
{
    js_ws(j);
    if (j->p < j->end && *j->p == ',') {
        j->p++;
        return 1;
    }
    if (j->p < j->end && *j->p == close) {
        j->p++;
        j->depth--;
        return 0;
    }
    return -1;
}

/* Members of the object at j->p, each handed to fn(key, value position);
 * fn parses the value (or returns 1 to have it skipped). */
typedef int (*member_fn)(struct js *j, const unsigned char *key, size_t klen, void *arg);

static int js_object(struct js *j, member_fn fn, void *arg)
{
    int more = js_open(j, '}');
    while (more == 1) {
        unsigned char key[64];
        size_t klen;
        js_ws(j);
        const unsigned char *at = j->p;
        if (js_string(j, key, sizeof key, &klen) != 0) {
            j->p = at;      /* a long key: none we look for */
            if (js_string(j, NULL, 0, &klen) != 0)
                return -1;
            klen = sizeof key + 1;
        }
        js_ws(j);
        if (j->p >= j->end || *j->p != ':')
            return -1;
        j->p++;
        js_ws(j);
        int r = fn && klen <= sizeof key ? fn(j, key, klen, arg) : 1;
        if (r < 0 || (r == 1 && js_value(j) != 0))
            return -1;
        more = js_next(j, '}');
    }
    return more;
}

static int js_value(struct js *j)
{
    size_t n;
    if (j->p >= j->end)
        return -1;
    switch (*j->p) {
    case '{':
        return js_object(j, NULL, NULL);
    case '[': {
        int more = js_open(j, ']');
        while (more == 1) {
            js_ws(j);
            if (js_value(j) != 0)
                return -1;
            more = js_next(j, ']');
        }
        return more;
    }
    case '"':
        return js_string(j, NULL, 0, &n);
    case 't':
        return js_literal(j, "true");
    case 'f':
        return js_literal(j, "false");
    case 'n':
        return js_literal(j, "null");
    default:
        return js_number(j);
    }
}

#define GROUP_KEYS 2
static const char *GROUP_ANNOTATIONS[GROUP_KEYS] = {"io.containerd.runc.v2.group",
                                                     "io.kubernetes.cri.sandbox-id"};

struct groups {
    /* The last value of each annotation (as a Python dict keeps it), if a
     * string; set[] says whether it was. */
    unsigned char value[GROUP_KEYS][VALUE_MAX];
    size_t len[GROUP_KEYS];
    int set[GROUP_KEYS];
};

static int annotation_member(struct js *j, const unsigned char *key, size_t klen, void *arg)
{
    struct groups *g = arg;
    for (int i = 0; i < GROUP_KEYS; i++) {
        if (klen != strlen(GROUP_ANNOTATIONS[i]) || memcmp(key, GROUP_ANNOTATIONS[i], klen))
            continue;
        g->set[i] = 0;
        if (j->p < j->end && *j->p == '"') {
            if (js_string(j, g->value[i], VALUE_MAX, &g->len[i]) != 0)
                return -1;
            g->set[i] = 1;
            return 0;
        }
        return 1;
    }
    return 1;
}

static int top_member(struct js *j, const unsigned char *key, size_t klen, void *arg)
{
    struct groups *g = arg;
    if (klen != 11 || memcmp(key, "annotations", 11) != 0)
        return 1;
    memset(g->set, 0, sizeof g->set);       /* the last "annotations" counts */
    if (j->p < j->end && *j->p == '{')
        return js_object(j, annotation_member, g) == 0 ? 0 : -1;
    return 1;
}

/* The group key (0), or -1: config.json unreadable or not plain JSON. */
static int group_of(const char *id, unsigned char *out, size_t cap, size_t *n)
{
    int fd = open("config.json", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > SPEC_MAX) {
        close(fd);
        return -1;
    }
    size_t size = (size_t)st.st_size;
    unsigned char *data = malloc(size ? size : 1);
    size_t got = 0;
    while (data && got < size) {
        ssize_t r = read(fd, data + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    static struct groups g;
    memset(&g, 0, sizeof g);
    struct js j = {data, data + got, 0};
    int ok = data && got == size;
    if (ok) {
        js_ws(&j);
        ok = j.p < j.end && *j.p == '{' && js_object(&j, top_member, &g) == 0;
        js_ws(&j);
        ok = ok && j.p == j.end;
    }
    free(data);
    if (!ok)
        return -1;
    for (int i = 0; i < GROUP_KEYS; i++) {
        if (g.set[i]) {
            if (g.len[i] > cap)
                return -1;
            memcpy(out, g.value[i], g.len[i]);
            *n = g.len[i];
            return 0;
        }
    }
    *n = strlen(id);
    if (*n > cap)
        return -1;
    memcpy(out, id, *n);
    return 0;
}

/* ---- the socket ------------------------------------------------------------ */

/* Go's path.Clean of the / joined non-empty parts (filepath.Join). */
static int go_join(const char *parts[], const size_t lens[], int n, char *out, size_t cap)
{
    char *raw = NULL;
    size_t rl = 0;
    for (int i = 0; i < n; i++)
        rl += lens[i] + 1;
    raw = malloc(rl + 1);
    if (!raw)
        return -1;
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        if (!lens[i])
            continue;
        if (o)
            raw[o++] = '/';
        memcpy(raw + o, parts[i], lens[i]);
        o += lens[i];
    }
    raw[o] = '\0';
    /* Clean: components, dropping "" and ".", ".." eating the one before. */
    int rooted = raw[0] == '/';
    size_t w = 0;
    const char *p = raw;
    while (*p) {
        while (*p == '/')
            p++;
        const char *e = p;
        while (*e && *e != '/')
            e++;
        size_t cl = (size_t)(e - p);
        if (cl == 0 || (cl == 1 && p[0] == '.')) {
            /* skip */
        } else if (cl == 2 && p[0] == '.' && p[1] == '.') {
            /* back to the previous component unless it is ".." itself */
            size_t start = w;
            while (start > 0 && out[start - 1] != '/')
                start--;
            int prev_dotdot = w - start == 2 && out[start] == '.' && out[start + 1] == '.';
            if (w > 0 && !prev_dotdot) {
                w = start > 0 ? start - 1 : 0;
            } else if (!rooted) {
                if (w + 3 > cap) {
                    free(raw);
                    return -1;
                }
                if (w)
                    out[w++] = '/';
                out[w++] = '.', out[w++] = '.';
            }
        } else {
            if (w + cl + 2 > cap) {
                free(raw);
                return -1;
            }
            if (w)
                out[w++] = '/';
            memcpy(out + w, p, cl);
            w += cl;
        }
        p = e;
    }
    free(raw);
    if (rooted) {
        if (w + 2 > cap)
            return -1;
        memmove(out + 1, out, w);
        out[0] = '/';
        w++;
    } else if (w == 0) {
        if (n == 0 || o == 0) {
            out[0] = '\0';
            return 0;
        }
        out[w++] = '.';
    }
    out[w] = '\0';
    return (int)w;
}

static int live(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path)
        return 0;
    strcpy(sa.sun_path, path);
    /* Non-blocking: a full backlog is "not sure" (Python waits 1 s). */
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s < 0)
        return 0;
    int ok = connect(s, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(s);
    return ok;
}

/* <bundle>/address as shim/bundle.py writes it: .address O_EXCL, rename;
 * not O_SYNC (bundle.py says why). */
static int write_address(const char *address)
{
    int flags = O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC;
    int fd = open(".address", flags, 0666);
    if (fd < 0 && errno == EEXIST) {
        unlink(".address");
        fd = open(".address", flags, 0666);
    }
    if (fd < 0)
        return -1;
    size_t n = strlen(address);
    int ok = write_full(fd, address, n) == n;
    close(fd);
    return ok ? rename(".address", "address") : -1;
}

int start_live_group(const struct cmd *c)
{
    if (!c->address || !c->id)
        return -1;          /* Python's path and errors */
    struct bytes in;
    if (read_stdin(&in) != 0) {
        fprintf(stderr, "io.containerd.pyshim.v1: reading start's stdin: out of memory\n");
        exit(1);
    }
    int answered = -1;
    struct bootstrap bp;
    unsigned char group[VALUE_MAX];
    size_t group_len;
    char joined[3 * VALUE_MAX], dir[PATH_MAX], path[PATH_MAX + 80], address[PATH_MAX + 88];
    char hex[65];
    if (read_start_input(&in, c, &bp) != 0 || group_of(c->id, group, sizeof group, &group_len))
        goto out;
    const char *parts[3] = {c->address, c->namespace, (const char *)group};
    size_t lens[3] = {strlen(c->address), strlen(c->namespace), group_len};
    if (memchr(group, '\0', group_len))
        goto out;
    int jl = go_join(parts, lens, 3, joined, sizeof joined);
    if (jl < 0)
        goto out;
    sha256_hex((const unsigned char *)joined, (size_t)jl, hex);
    /* socket_dir.rstrip("/"): the bootstrap's dir, else the usual one */
    size_t dl = bp.is && bp.socket_dir_len ? bp.socket_dir_len : strlen(SOCKET_DIR);
    if (dl >= sizeof dir)
        goto out;
    memcpy(dir, bp.is && bp.socket_dir_len ? (const char *)bp.socket_dir : SOCKET_DIR, dl);
    while (dl && dir[dl - 1] == '/')
        dl--;
    dir[dl] = '\0';
    if (memchr(dir, '\0', dl))
        goto out;
    snprintf(path, sizeof path, "%s/%s", dir, hex);
    if (!live(path))
        goto out;           /* a new shim: the template or Python */
    snprintf(address, sizeof address, "unix://%s", path);
    if (write_address(address) != 0)
        goto out;
    answered = 0;
    if (!bp.is) {
        if (write_full(1, address, strlen(address)) != strlen(address))
            exit(1);
    } else {
        /* BootstrapResult{version, address, protocol: "ttrpc"} */
        size_t al = strlen(address), n = 0;
        unsigned char *msg = malloc(al + 32);
        if (!msg)
            exit(1);
        msg[n++] = 0x08;
        n += put_varint(msg + n, TASK_API_VERSION);
        msg[n++] = 0x12;
        n += put_varint(msg + n, al);
        memcpy(msg + n, address, al);
        n += al;
        msg[n++] = 0x1a;
        msg[n++] = 5;
        memcpy(msg + n, "ttrpc", 5);
        n += 5;
        if (write_full(1, msg, n) != n)
            exit(1);
        free(msg);
    }
out:
    if (answered != 0 && restore_stdin(&in) != 0) {
        fprintf(stderr, "io.containerd.pyshim.v1: cannot hand on start's stdin: %s\n",
                strerror(errno));
        exit(1);
    }
    free(in.p);
    return answered;
}
