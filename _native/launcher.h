/* Shared by the native launcher's files (_native/launcher*.c). */
#ifndef PYSHIM_LAUNCHER_H
#define PYSHIM_LAUNCHER_H

#include <stddef.h>
#include <stdint.h>

/* The command line, as far as the launcher routes it. */
struct cmd {
    const char *action, *namespace, *id, *bundle, *address;
};

/* launcher.c: helpers both files use. */
/* Bytes of `v` as a protobuf varint at p (at most 10). */
size_t put_varint(unsigned char *p, uint64_t v);
/* write(2) until all n bytes are out (EINTR retried); how many went out. */
size_t write_full(int fd, const void *p, size_t n);

/* launcher_group.c: `start` when a live shim already serves the group.
 * 0: answered (address file written, reply printed); -1: not answered,
 * stdin left as it was (same bytes), nothing written. */
int start_live_group(const struct cmd *c);

#endif
