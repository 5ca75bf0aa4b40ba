/*
 * daemon_delivery.c - the daemon's delivery engine: created from the
 * configuration after the queue is open, kicked when the queue commits new
 * work, its MTA-STS counters in `status`, closed before the queue is.
 */
#include <unistd.h>

#include "delivery.h"
#include "mta.h"
#include "settings.h"
#include "shared.h"

static void new_work(struct mta *m)
{
    delivery_kick(m->delivery);
}

/* convoyctl status: "sts": the policy cache and what delivery saw. */
static void sts_status_hook(struct mta *m, json_t *status)
{
    delivery_sts_status(m->delivery, status);
    delivery_route_status(m->delivery, status);
    shared_status(m->shared, status);
}

/* Start the shared_state client when one is configured: 0 (also when none
 * is), or the error of a malformed URL (settings_conf_check() refuses
 * those before we get here). Redis being unreachable is not an error. */
static int shared_start(struct mta *m, struct buf *err)
{
    struct shared_options so;
    int rc = settings_shared_options(m->conf, &so, NULL, err);
    if (rc == 1)
        return 0;
    if (rc != 0)
        return rc;
    char host[256] = "";
    if (!so.node || !so.node[0]) {
        if (gethostname(host, sizeof(host) - 1) != 0 || !host[0])
            str_copy(host, "localhost", sizeof(host));
        so.node = host;
    }
    so.loop = m->loop;
    /* rediss://: hiredis reaches the TLS bridge through a socket here. */
    char tls_dir[4096];
    snprintf(tls_dir, sizeof(tls_dir), "%s/" SHARED_TLS_DIR, m->conf->queue_directory);
    so.tls_dir = tls_dir;
    return shared_new(&so, &m->shared, err);
}

int mta_delivery_start(struct mta *m, struct buf *err)
{
    if (m->delivery) {
        buf_printf(err, "delivery already started");
        return ERR_EXISTS;
    }
    int rc = shared_start(m, err);
    if (rc != 0)
        return rc;
    struct delivery_options o = {
        .loop = m->loop,
        .conf = m->conf,
        .queue = m->queue,
        .helo_name = settings_helo_name,
        .dns_options = settings_dns_options,
        .policy_options = settings_policy_options,
        .tlsrpt = m->tlsrpt,
        .shared = m->shared,
    };
    rc = delivery_new(&o, &m->delivery, err);
    if (rc != 0) {
        shared_close(m->shared);
        m->shared = NULL;
        return rc;
    }
    static bool hooked;
    if (!hooked) {
        control_add_status_hook(sts_status_hook);
        hooked = true;
    }
    m->on_new_work = new_work;
    return 0;
}

void mta_delivery_close(struct mta *m)
{
    if (m->on_new_work == new_work)
        m->on_new_work = NULL;
    delivery_close(m->delivery);
    m->delivery = NULL;
    /* After the engine: its grants in flight call back and let it go. */
    shared_close(m->shared);
    m->shared = NULL;
}
