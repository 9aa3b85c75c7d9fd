/* Shared by the native launcher's files (_native/launcher*.c). */
#ifndef PYSHIM_LAUNCHER_H
#define PYSHIM_LAUNCHER_H

/* The command line, as far as the launcher routes it. */
struct cmd {
    const char *action, *namespace, *id, *bundle, *address;
};

/* launcher_group.c: `start` when a live shim already serves the group.
 * 0: answered (address file written, reply printed); -1: not answered,
 * stdin left as it was (same bytes), nothing written. */
int start_live_group(const struct cmd *c);

#endif
