/*
 * policy_int.h - private to policy/: the HTTPS fetcher used by the engine
 * and the probe.
 */
#ifndef CONVOY_POLICY_INT_H
#define CONVOY_POLICY_INT_H

#include "dns.h"
#include "policy.h"

struct fetch;

/* How a fetch ended; read it in the done callback. */
struct fetch_result {
    int status; /* 0: a 200 text/plain body arrived; else an enum err */
    enum policy_failure failure;
    char why[256];
    int http_status;
    bool tls_done;
    struct tls_facts tls;
    const char *body; /* valid during the callback */
    size_t body_len;
};

typedef void (*fetch_cb)(void *arg, const struct fetch_result *r);

struct fetch_params {
    uv_loop_t *loop;
    struct dns *dns;
    struct tls_ctx *tls;
    uint16_t port;
    uint32_t timeout_ms;
    uint32_t connect_timeout_ms;
    size_t max_body;
    const char *user_agent;
    /* A POST instead of the policy GET (policy_post(), TLS-RPT): the URL's
     * host (instead of mta-sts.DOMAIN) and path, the body (copied) and its
     * media type. Any 2xx is success. NULL post_host: the policy GET. */
    const char *post_host;
    const char *post_path;
    const void *post_body;
    size_t post_len;
    const char *post_type;
};

/*
 * Fetch https://mta-sts.DOMAIN/.well-known/mta-sts.txt (RFC 8461 3.3). The
 * callback runs exactly once, never before this returns, unless
 * fetch_abort() is called first. The fetch frees itself after the callback
 * (its handles close on the loop). It takes its own reference to fp->tls
 * (the caller may drop its own at once); the other pointers in fp must
 * outlive it. NULL on allocation failure.
 */
struct fetch *fetch_start(const struct fetch_params *fp, const char *domain, fetch_cb cb,
                          void *arg);
/* Stop a fetch: its callback will not run. */
void fetch_abort(struct fetch *f);

#endif
