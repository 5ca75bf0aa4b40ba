/*
 * tls_bridge.h - Redis over TLS (rediss://) for a client without TLS.
 *
 * Debian 12's hiredis (0.14) cannot speak TLS, so convoyd gives it a
 * private unix socket instead: the bridge listens on DIR/redis.sock
 * (DIR made mode 0700, the socket 0600, a stale socket removed) and
 * relays each connection accepted there to one TLS connection to
 * HOST:PORT made with tls/ (struct tls_stream): the certificate must
 * chain to a root of ca_file (NULL or "": the system trust store) and
 * name HOST (TLS_VERIFY_HOST: RFC 6125 as tls/ applies it; SNI is HOST
 * unless it is an IP address). The client writes as soon as it is
 * connected: what it sends before the handshake is over waits in the
 * bridge (bounded) and goes out encrypted after it.
 *
 *   hiredis --unix socket--> bridge link --TLS (tls_stream)--> Redis
 *
 * Flow control: each direction holds at most buf_max bytes; when a side's
 * queue is full the bridge stops reading the other side until it drains.
 * Either side ending ends the link: the client's end shuts the TLS side
 * down (close_notify, FIN); the TLS side's end closes the client after
 * what Redis sent was written to it. The bridge has no timer: the client
 * (shared.c) bounds connects and requests and closes the unix connection,
 * which closes the TLS one.
 *
 * Errors: a link whose TLS side fails (resolving, connecting, the
 * handshake with the certificate's reason, or the session ending while
 * the client still had it open) calls on_error once with a text; the
 * client connection is closed too, so the Redis client sees its
 * connection drop and falls back. on_error is never called for an end
 * the client asked for.
 *
 * Threads: the loop thread only. Callbacks run from libuv callbacks only.
 */
#ifndef CONVOY_TLS_BRIDGE_H
#define CONVOY_TLS_BRIDGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "base.h"

struct tls_bridge;

#define TLS_BRIDGE_SOCKET "redis.sock"
#define TLS_BRIDGE_BUF_MAX (256 * 1024)

/* A link's TLS side failed: why is a line for logs and status; handshake
 * is true when the TLS handshake itself failed (the certificate, the
 * name, the protocol), false for resolving, connecting and a lost
 * session. */
typedef void tls_bridge_error_cb(void *arg, const char *why, bool handshake);
/* A link's TLS handshake succeeded (version and cipher for status). */
typedef void tls_bridge_up_cb(void *arg, const char *version, const char *cipher);

struct tls_bridge_options {
    uv_loop_t *loop;               /* required */
    const char *dir;               /* required: the directory of the socket */
    const char *host;              /* required: connect to, SNI and name check */
    uint16_t port;                 /* required */
    const char *ca_file;           /* NULL or "": the system trust store */
    size_t buf_max;                /* bytes queued per direction; 0: TLS_BRIDGE_BUF_MAX */
    tls_bridge_error_cb *on_error; /* optional */
    tls_bridge_up_cb *on_up;       /* optional */
    void *arg;
};

/*
 * Make the directory and the socket, load the trust store and start
 * listening. 0; ERR_INVAL (a bad CA file, a path too long, a directory
 * that is not ours), ERR_IO (the socket) or ERR_NOMEM, with the reason in
 * err.
 */
int tls_bridge_new(const struct tls_bridge_options *o, struct tls_bridge **out, struct buf *err);
/* The socket's path, for redisAsyncConnectUnix(). */
const char *tls_bridge_path(const struct tls_bridge *b);
/* Links open now. */
size_t tls_bridge_links(const struct tls_bridge *b);
/* Bytes the links hold now, both ways (waiting for the handshake, queued
 * for Redis, queued for the client): each link stays within about twice
 * buf_max plus one read. */
size_t tls_bridge_queued(const struct tls_bridge *b);
/*
 * Stop listening, close every link (no on_error for them) and remove the
 * socket; the bridge frees itself once its handles are closed (run the
 * loop). NULL does nothing.
 */
void tls_bridge_close(struct tls_bridge *b);

#endif
