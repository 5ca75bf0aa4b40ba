/*
 * shared_int.h - what the files of shared/ share among themselves: one
 * command to Redis with its raw reply (shared.c's request machinery, its
 * deadline and its failure on teardown). Not part of the module's
 * contract (shared.h).
 */
#ifndef CONVOY_SHARED_INT_H
#define CONVOY_SHARED_INT_H

#include <hiredis/hiredis.h>

#include "shared.h"

/* The reply of one command: status 0 and rp (which may be a Redis error
 * reply: status ERR_PROTO then), or a negative enum err and rp NULL. rp
 * lives until the callback returns. */
typedef void (*shared_reply_cb)(void *arg, int status, const redisReply *rp);

/*
 * Send one command (argv/lens as redisAsyncCommandArgv()). 0: cb (when
 * not NULL) is called once, later; cb NULL: fire and forget. Not 0 (the
 * state is not up, ERR_AGAIN; or an error): cb is never called.
 */
int shared_command(struct shared *s, int argc, const char **argv, const size_t *lens,
                   shared_reply_cb cb, void *arg);

#endif
