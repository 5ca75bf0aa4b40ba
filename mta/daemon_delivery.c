/*
 * daemon_delivery.c - the daemon's delivery engine: created from the
 * configuration after the queue is open, kicked when the queue commits new
 * work, its MTA-STS counters in `status`, closed before the queue is.
 */
#include "delivery.h"
#include "mta.h"
#include "settings.h"

static void new_work(struct mta *m)
{
    delivery_kick(m->delivery);
}

/* convoyctl status: "sts": the policy cache and what delivery saw. */
static void sts_status_hook(struct mta *m, json_t *status)
{
    delivery_sts_status(m->delivery, status);
    delivery_route_status(m->delivery, status);
}

int mta_delivery_start(struct mta *m, struct buf *err)
{
    if (m->delivery) {
        buf_printf(err, "delivery already started");
        return ERR_EXISTS;
    }
    struct delivery_options o = {
        .loop = m->loop,
        .conf = m->conf,
        .queue = m->queue,
        .helo_name = settings_helo_name,
        .dns_options = settings_dns_options,
        .policy_options = settings_policy_options,
        .tlsrpt = m->tlsrpt,
    };
    int rc = delivery_new(&o, &m->delivery, err);
    if (rc != 0)
        return rc;
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
}
