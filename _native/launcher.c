/* containerd-shim-pyshim-v1, the installed binary (issue 12): a small
 * native launcher, so that no Python start-up is on a container's critical
 * path.
 *
 *   start   when a live shim already serves the container's group (the
 *           per-container start of a pod): write the bundle's address
 *           file and print the address (or containerd 2.3's
 *           BootstrapResult) itself, as shim/manager.py's start would;
 *           else hand argv, environment, cwd and stdio to the resident
 *           template process (shim/template.py; protocol:
 *           shim/template_client.py) and exit with the status of the start
 *           it runs;
 *   delete  when the serving shim already cleaned up (the bundle's
 *           .pyshim-deleted mark, shim/bundle.py): remove a dead socket,
 *           print the DeleteResponse itself;
 *   anything else, or any doubt (no template, a refusal, an unusual
 *           bundle, -v, -info, serve mode): exec the Python launcher
 *           installed next to this binary, which does everything on its
 *           own (and starts the template for the next start).
 *
 * The Python launcher learns the name containerd ran us under from
 * PYSHIM_ARGV0 (its ps name, shim.launch.show_name).
 *
 * Plain C, no Python; built by setup.py with -DPYSHIM_BUILD_ID="...".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "launcher.h"

#ifndef PYSHIM_BUILD_ID
#define PYSHIM_BUILD_ID ""
#endif

#define TEMPLATE_SOCKET "/run/containerd/s/pyshim-template-" PYSHIM_BUILD_ID
#define PY_LAUNCHER "pyshim-launcher"
#define MAGIC "PYSHIMT1"
#define ACCEPT_TIMEOUT_S 5

extern char **environ;

static char self_dir[PATH_MAX];

/* ---- exec the Python launcher ---------------------------------------- */

static int executable(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode) && access(p, X_OK) == 0;
}

/* The interpreter next to this binary (venv, pyenv), else python3 on PATH:
 * what the Python launcher's own sh preamble looks for. */
static int find_python(char *out, size_t n)
{
    const char *names[] = {"python3", "python"};
    for (int i = 0; i < 2; i++) {
        if (snprintf(out, n, "%.*s/%s", (int)(n - 16), self_dir, names[i]) >= (int)n)
            continue;
        if (executable(out))
            return 0;
    }
    const char *path = getenv("PATH");
    if (!path)
        path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        const char *end = strchr(path, ':');
        size_t len = end ? (size_t)(end - path) : strlen(path);
        if (len && len + 9 < n) {
            snprintf(out, n, "%.*s/python3", (int)len, path);
            if (executable(out))
                return 0;
        }
        path += len + (end ? 1 : 0);
    }
    return -1;
}

static void exec_python(int argc, char **argv)
{
    char py[PATH_MAX + 32], script[PATH_MAX + 32];
    snprintf(script, sizeof script, "%s/%s", self_dir, PY_LAUNCHER);
    if (find_python(py, sizeof py) != 0) {
        fprintf(stderr, "containerd-shim-pyshim-v1: no python3 found\n");
        exit(127);
    }
    char **args = calloc((size_t)argc + 4, sizeof(char *));
    if (!args)
        exit(127);
    args[0] = py;
    args[1] = "-I";
    args[2] = "-S";
    args[3] = script;
    for (int i = 1; i < argc; i++)
        args[3 + i] = argv[i];
    setenv("PYSHIM_ARGV0", argv[0], 1);
    execv(py, args);
    fprintf(stderr, "containerd-shim-pyshim-v1: exec %s: %s\n", py, strerror(errno));
    exit(127);
}

/* ---- the command line (shim.cli's Go flag rules, enough to route) ------ */

static const char *STRING_FLAGS[] = {"namespace", "id", "address", "publish-binary", "bundle",
                                     "socket", "debug-socket", NULL};
static const char *BOOL_FLAGS[] = {"debug", NULL};


static int in(const char *name, size_t len, const char **list)
{
    for (; *list; list++)
        if (strlen(*list) == len && strncmp(*list, name, len) == 0)
            return 1;
    return 0;
}

/* 0: parsed; -1: anything this launcher does not route itself (unknown
 * or odd flags, -v, -info, -h...): the Python launcher decides. */
static int parse(int argc, char **argv, struct cmd *c)
{
    memset(c, 0, sizeof *c);
    int i = 1;
    while (i < argc) {
        const char *a = argv[i];
        if (a[0] != '-' || a[1] == '\0')
            break;
        if (strcmp(a, "--") == 0)
            return -1;
        const char *name = a[1] == '-' ? a + 2 : a + 1;
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        i++;
        if (in(name, len, BOOL_FLAGS)) {
            if (eq)
                return -1;
            continue;
        }
        if (!in(name, len, STRING_FLAGS))
            return -1;
        const char *value;
        if (eq) {
            value = eq + 1;
        } else {
            if (i >= argc)
                return -1;
            value = argv[i++];
        }
        if (strncmp(name, "namespace", len) == 0 && len == 9)
            c->namespace = value;
        else if (strncmp(name, "id", len) == 0 && len == 2)
            c->id = value;
        else if (strncmp(name, "bundle", len) == 0 && len == 6)
            c->bundle = value;
        else if (strncmp(name, "address", len) == 0 && len == 7)
            c->address = value;
    }
    if (i != argc - 1 || !c->namespace || !c->namespace[0])
        return -1;
    c->action = argv[i];
    return 0;
}

/* ---- start: through the template ------------------------------------- */

struct buf {
    char *p;
    size_t len, cap;
};

static int put(struct buf *b, const char *s, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + n)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

static int put_field(struct buf *b, const char *s)
{
    return put(b, s, strlen(s) + 1);
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Returns the start's exit status, or -1: not accepted (nothing read from
 * stdin, nothing written), start through Python. */
static int start_in_template(int argc, char **argv)
{
    const char *v = getenv("PYSHIM_TEMPLATE");
    if (!PYSHIM_BUILD_ID[0] || (v && (!strcasecmp(v, "0") || !strcasecmp(v, "false") ||
                                      !strcasecmp(v, "no") || !strcasecmp(v, "off"))))
        return -1;
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd))
        return -1;
    struct buf b = {0};
    char num[32];
    snprintf(num, sizeof num, "%d", (int)getppid());
    int bad = put_field(&b, num) || put_field(&b, cwd);
    snprintf(num, sizeof num, "%d", argc);
    bad |= put_field(&b, num);
    for (int i = 0; i < argc && !bad; i++)
        bad |= put_field(&b, argv[i]);
    for (char **e = environ; *e && !bad; e++)
        bad |= put_field(&b, *e);
    if (bad)
        return -1;

    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    struct timeval tv = {ACCEPT_TIMEOUT_S, 0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", TEMPLATE_SOCKET);
    if (connect(s, (struct sockaddr *)&sa, sizeof sa) != 0)
        goto refused;

    char hdr[sizeof MAGIC - 1 + 4];
    memcpy(hdr, MAGIC, sizeof MAGIC - 1);
    uint32_t n = (uint32_t)b.len;
    for (int i = 0; i < 4; i++)
        hdr[sizeof MAGIC - 1 + i] = (char)((n >> (8 * i)) & 0xff);
    int fds[3] = {0, 1, 2};
    char cbuf[CMSG_SPACE(sizeof fds)];
    memset(cbuf, 0, sizeof cbuf);
    struct iovec iov = {hdr, sizeof hdr};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                        .msg_controllen = sizeof cbuf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(cm), fds, sizeof fds);
    ssize_t w;
    do {
        w = sendmsg(s, &mh, MSG_NOSIGNAL);
    } while (w < 0 && errno == EINTR);
    if (w != (ssize_t)sizeof hdr || send_all(s, b.p, b.len) != 0)
        goto refused;
    char ack;
    ssize_t r;
    do {
        r = recv(s, &ack, 1, 0);
    } while (r < 0 && errno == EINTR);
    if (r != 1 || ack != 'A')
        goto refused;

    /* Accepted: the start runs there, as long as it takes. */
    struct timeval forever = {0, 0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &forever, sizeof forever);
    char answer[64];
    size_t got = 0;
    while (got < sizeof answer - 1) {
        r = recv(s, answer + got, sizeof answer - 1 - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
        if (answer[got - 1] == '\n')
            break;
    }
    answer[got] = '\0';
    close(s);
    if (got >= 3 && answer[0] == 'X' && answer[got - 1] == '\n')
        return atoi(answer + 1) & 0xff;
    fprintf(stderr, "io.containerd.pyshim.v1: the template process lost this start\n");
    return 1;

refused:
    close(s);
    free(b.p);
    return -1;
}

/* ---- delete: the fast path -------------------------------------------- */

static int read_file(const char *path, char *out, size_t n)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t got = 0;
    while (got < n - 1) {
        ssize_t r = read(fd, out + got, n - 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    out[got] = '\0';
    return (int)got;
}

size_t write_full(int fd, const void *p, size_t n)
{
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, (const char *)p + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    return off;
}

size_t put_varint(unsigned char *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (unsigned char)((v & 0x7f) | 0x80);
        v >>= 7;
    }
    p[n++] = (unsigned char)v;
    return n;
}

/* 0: done (DeleteResponse written); -1: let Python do it all. */
static int fast_delete(const struct cmd *c)
{
    char bundle[2 * PATH_MAX], path[2 * PATH_MAX + 64], data[PATH_MAX + 16];
    if (c->bundle && c->bundle[0]) {
        snprintf(bundle, sizeof bundle, "%s", c->bundle);
    } else {
        char cwd[PATH_MAX];
        if (!c->id || !getcwd(cwd, sizeof cwd))
            return -1;
        char *slash = strrchr(cwd, '/');
        if (!slash)
            return -1;
        *slash = '\0';
        snprintf(bundle, sizeof bundle, "%s/%s", cwd, c->id);
    }
    struct stat st, root;
    snprintf(path, sizeof path, "%s/.pyshim-deleted", bundle);
    if (stat(path, &st) != 0)
        return -1;                  /* runc delete still to do */
    /* The shim unmounted the rootfs; anything still mounted there: Python. */
    snprintf(path, sizeof path, "%s/rootfs", bundle);
    if (stat(path, &root) == 0) {
        if (stat(bundle, &st) != 0 || st.st_dev != root.st_dev)
            return -1;
    } else if (errno != ENOENT) {
        return -1;
    }
    snprintf(path, sizeof path, "%s/init.pid", bundle);
    int n = read_file(path, data, 32);
    if (n <= 0)
        return -1;                  /* Python warns about it */
    char *end;
    errno = 0;
    long pid = strtol(data, &end, 10);
    while (*end == '\n' || *end == ' ')
        end++;
    if (errno || end == data || *end || pid < 0 || pid > INT32_MAX)
        return -1;
    /* A killed shim's socket file: removed when nobody listens on it. */
    snprintf(path, sizeof path, "%s/address", bundle);
    n = read_file(path, data, sizeof data);
    if (n > 7 && strncmp(data, "unix://", 7) == 0) {
        char *sock = data + 7;
        sock[strcspn(sock, "\n")] = '\0';
        if (stat(sock, &st) == 0) {
            int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
            struct sockaddr_un sa = {.sun_family = AF_UNIX};
            if (s < 0 || strlen(sock) >= sizeof sa.sun_path) {
                if (s >= 0)
                    close(s);
                return -1;
            }
            strcpy(sa.sun_path, sock);
            if (connect(s, (struct sockaddr *)&sa, sizeof sa) != 0) {
                if (errno != ECONNREFUSED) {
                    close(s);
                    return -1;
                }
                unlink(sock);
            }
            close(s);
        }
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    unsigned char ts[24], out[64];
    size_t tl = 0, ol = 0;
    if (now.tv_sec) {
        ts[tl++] = 0x08;
        tl += put_varint(ts + tl, (uint64_t)now.tv_sec);
    }
    if (now.tv_nsec) {
        ts[tl++] = 0x10;
        tl += put_varint(ts + tl, (uint64_t)now.tv_nsec);
    }
    if (pid) {
        out[ol++] = 0x08;
        ol += put_varint(out + ol, (uint64_t)pid);
    }
    out[ol++] = 0x10;
    ol += put_varint(out + ol, 128 + 9);     /* SIGKILL's status, as the Python delete */
    out[ol++] = 0x1a;
    ol += put_varint(out + ol, tl);
    memcpy(out + ol, ts, tl);
    ol += tl;
    size_t off = write_full(1, out, ol);
    if (off != ol)
        return off ? (exit(1), 0) : -1;     /* nothing out yet: Python may try */
    return 0;
}

int main(int argc, char **argv)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) {
        fprintf(stderr, "containerd-shim-pyshim-v1: /proc/self/exe: %s\n", strerror(errno));
        return 127;
    }
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    *slash = '\0';
    snprintf(self_dir, sizeof self_dir, "%s", exe[0] ? exe : "/");

    struct cmd c;
    if (argc > 0 && parse(argc, argv, &c) == 0) {
        if (strcmp(c.action, "start") == 0) {
            if (start_live_group(&c) == 0)
                return 0;
            int code = start_in_template(argc, argv);
            if (code >= 0)
                return code;
        } else if (strcmp(c.action, "delete") == 0) {
            if (fast_delete(&c) == 0)
                return 0;
        }
    }
    exec_python(argc, argv);
    return 127;
}
