/*
 * sched.c - the scheduler: leases due recipients from the queue (at once
 * when the queue says new work was committed, else at the schedule's next
 * due time) and files them by destination into jobs of at most
 * default_destination_recipient_limit recipients. Expired recipients
 * (maximal_queue_lifetime) are bounced with 4.4.7 through the DSN path,
 * unless an enforce policy deferred their last attempt: then a
 * policy_recheck() comes first (RFC 8461 5). Paused destinations are not
 * leased, or their recipients go back to the queue (pause.c keeps the
 * table).
 */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <jansson.h>

#include "conf.h"
#include "deliver_int.h"
#include "delivery.h"
#include "dns.h"
#include "policy.h"
#include "queue.h"
#include "smtp.h"
#include "tls.h"
#include "verdict.h"

/* ---- the scheduler -------------------------------------------------------------------- */

static void sched_file(struct delivery *dl, const struct queue_due *due, int64_t now);
static void sched_expire_bounce(struct delivery *dl, const struct queue_due *due);

/* An expired recipient whose last attempt an enforce policy deferred waits
 * for policy_recheck() (RFC 8461 5) before it becomes a bounce. */
struct recheck {
    struct recheck *next;
    struct delivery *dl;
    struct policy_req *req;
    struct queue_due due; /* addr and sender point into the strings below */
    char *addr;
    char *sender;
    char old_id[POLICY_ID_MAX + 1];
};

static void recheck_free(struct recheck *rk)
{
    struct recheck **pp = &rk->dl->rechecks;
    while (*pp && *pp != rk)
        pp = &(*pp)->next;
    if (*pp)
        *pp = rk->next;
    free(rk->addr);
    free(rk->sender);
    free(rk);
}

static void on_recheck(void *arg, const struct policy_result *r)
{
    struct recheck *rk = arg;
    struct delivery *dl = rk->dl;
    rk->req = NULL;
    dl->pending_reqs--;
    /* The verdict decides from the whole policy (r->change), not the id
     * alone; same_as_last covers a change seen before this recheck. */
    struct verdict_recheck_in in = {
        .have_policy = r->have_policy && r->policy,
        .mode = r->have_policy && r->policy ? r->policy->mode : POLICY_MODE_NONE,
        .change = r->change,
        .same_as_last = strcmp(r->id ? r->id : "", rk->old_id) == 0,
    };
    struct verdict v;
    verdict_recheck(&in, &v);
    bool same = v.action == VERDICT_BOUNCE;
    if (dl->stopping) {
        /* Shutting down: the recipient waits in the queue for the next run. */
        dl_unlease(dl, rk->due.id, rk->due.rcpt);
        dl->inflight--;
    } else if (same) {
        log_info(QCOMP, "%s: MTA-STS recheck for %s: policy id=%s unchanged", rk->due.id,
                 rk->due.addr, rk->old_id);
        sched_expire_bounce(dl, &rk->due);
    } else {
        /* A newer policy (or none): one more attempt under it. */
        log_info(QCOMP, "%s: MTA-STS recheck for %s: policy %s%s%s, trying again", rk->due.id,
                 rk->due.addr, r->have_policy ? "id=" : "gone",
                 r->have_policy && r->id ? r->id : "",
                 r->change == POLICY_CHANGE_CONTENT ? " changed (same id, new content)" : "");
        rk->due.expired = false;
        sched_file(dl, &rk->due, dl_now(dl));
        route_flush(dl);
        for (struct dest *d = dl->dests; d; d = d->next)
            dest_run(d);
    }
    recheck_free(rk);
    deliver_maybe_free(dl);
}

/* delivery_close(): the rechecks in flight give their recipients back. */
void sched_rechecks_drop(struct delivery *dl)
{
    while (dl->rechecks) {
        struct recheck *rk = dl->rechecks;
        if (rk->req)
            policy_cancel(rk->req);
        dl->pending_reqs--;
        dl_unlease(dl, rk->due.id, rk->due.rcpt);
        dl->inflight--;
        recheck_free(rk);
    }
}

/* Expired recipients: bounce with 4.4.7 and the last result, via a DSN -
 * unless the last attempt failed for an enforce policy: then look for a
 * newer policy first (once per policy id). */
static void expire(struct delivery *dl, const struct queue_due *due)
{
    struct queue_message *qm = NULL;
    queue_message_read(dl->q, due->id, &qm);
    const struct queue_rcpt *qr = qm && due->rcpt < qm->n_rcpts ? &qm->rcpts[due->rcpt] : NULL;
    struct verdict_expiry_in in = {
        .can_recheck = dl->pol && !dl->relay,
        .have_last = qr && qr->has_result,
        .last_mode =
            qr && qr->has_result ? verdict_mode_parse(qr->last.sts_mode) : POLICY_MODE_NONE,
        .last_status = verdict_status_parse(qr && qr->has_result ? qr->last.dsn : NULL),
    };
    struct verdict v;
    verdict_expired(&in, &v);
    struct recheck *rk = v.reason == VR_EXPIRED_RECHECK ? calloc(1, sizeof(*rk)) : NULL;
    if (rk) {
        char dom[256];
        addr_domain(due->addr, dom, sizeof(dom));
        rk->dl = dl;
        rk->due = *due;
        rk->addr = dl_strdup(due->addr);
        rk->sender = dl_strdup(due->sender);
        str_copy(rk->old_id, qr->last.sts_id ? qr->last.sts_id : "", sizeof(rk->old_id));
        rk->due.addr = rk->addr;
        rk->due.sender = rk->sender;
        if (rk->addr && rk->sender && policy_recheck(dl->pol, dom, on_recheck, rk, &rk->req) == 0) {
            rk->next = dl->rechecks;
            dl->rechecks = rk;
            dl->pending_reqs++;
            dl->sts_rechecks++;
            queue_message_free(qm);
            return;
        }
        free(rk->addr);
        free(rk->sender);
        free(rk);
    }
    queue_message_free(qm);
    sched_expire_bounce(dl, due);
}

static void sched_expire_bounce(struct delivery *dl, const struct queue_due *due)
{
    struct queue_message *qm = NULL;
    queue_message_read(dl->q, due->id, &qm);
    const struct queue_rcpt *qr = qm && due->rcpt < qm->n_rcpts ? &qm->rcpts[due->rcpt] : NULL;
    const char *last = qr && qr->has_result ? qr->last.text : "";
    /* The verdict of an expiry with no recheck left: a bounce, 4.4.7. */
    struct verdict_expiry_in in = {.can_recheck = false};
    struct verdict v;
    verdict_expired(&in, &v);
    struct dsn_item *it = calloc(1, sizeof(*it));
    if (!it) {
        queue_message_free(qm);
        dl->inflight--;
        return;
    }
    char text[1200];
    snprintf(text, sizeof(text), "delivery time expired%s%s", last[0] ? ": " : "", last);
    it->rcpt = due->rcpt;
    it->code = qr && qr->has_result ? qr->last.smtp_code : 0;
    str_copy(it->dsn, v.status, sizeof(it->dsn));
    it->text = dl_strdup(text);
    if (qr && qr->has_result) {
        str_copy(it->mx, qr->last.mx ? qr->last.mx : "", sizeof(it->mx));
        str_copy(it->ip, qr->last.ip ? qr->last.ip : "", sizeof(it->ip));
        it->last_attempt_ms = qr->last.when_ms;
    }
    str_copy(it->remote_mta, it->mx, sizeof(it->remote_mta));
    struct smtp_outcome o;
    memset(&o, 0, sizeof(o));
    o.action = verdict_smtp_action(v.action);
    str_copy(o.status, v.status, sizeof(o.status));
    str_copy(o.text, text, sizeof(o.text));
    int64_t now = dl_now(dl);
    deliver_log_rcpt(due->id, due->addr, "none", due->arrival_ms, now, now, now, now, true, &o,
                     NULL);
    size_t blen = 0;
    char *body = qm ? dl_read_body(dl, due->id, qm->env.size, &blen) : NULL;
    dsn_send(dl, due->id, qm, (struct view){body ? body : "", body ? blen : 0}, DSN_FAILED, it, 1,
             NULL);
    free(body);
    queue_message_free(qm);
    dl->inflight--;
}

static void sched_file(struct delivery *dl, const struct queue_due *due, int64_t now)
{
    if (pause_postpone(dl, due, now))
        return;
    /* transport_maps, relayhost or the domain itself (route.c). */
    char name[256];
    if (route_recipient(dl, due, name, sizeof(name)))
        return;
    struct dest *d = name[0] ? dest_get(dl, name) : NULL;
    if (!d) {
        /* No domain (or no memory): nothing sensible to try now. */
        dl_defer_due(dl, due, name[0] ? "out of memory" : "no domain in address");
        return;
    }
    struct job *j = d->tail;
    char rdom[256];
    addr_domain(due->addr, rdom, sizeof(rdom));
    size_t limit = route_rcpt_limit(dl, rdom);
    if (!j || strcmp(j->id, due->id) != 0 || j->n >= limit || j->msg.rcpt) {
        j = calloc(1, sizeof(*j));
        if (!j || !(j->sender = dl_strdup(due->sender))) {
            job_free(j);
            dl_defer_due(dl, due, "out of memory");
            return;
        }
        j->dest = d;
        str_copy(j->id, due->id, sizeof(j->id));
        j->flags = due->flags;
        j->arrival_ms = due->arrival_ms;
        j->lease_ms = now;
        if (d->tail)
            d->tail->next = j;
        else
            d->head = j;
        d->tail = j;
        d->njobs++;
    }
    if (!job_add_rcpt(j, due))
        dl_defer_due(dl, due, "out of memory");
}

static void on_lease(void *arg, int status, struct queue_due *due, size_t n)
{
    struct delivery *dl = arg;
    dl->leasing = false;
    dl->pending_reqs--;
    if (dl->closing) {
        for (size_t i = 0; i < n; i++)
            dl_unlease(dl, due[i].id, due[i].rcpt);
        queue_due_free(due);
        deliver_maybe_free(dl);
        return;
    }
    if (status != 0) {
        log_warn(QCOMP, "cannot take due mail from the queue: %s", err_str(status));
        queue_due_free(due);
        sched_lease_in(dl, 5000);
        return;
    }
    int64_t now = dl_now(dl);
    dl->inflight += n;
    for (size_t i = 0; i < n; i++) {
        if (due[i].expired)
            expire(dl, &due[i]);
        else
            sched_file(dl, &due[i], now);
    }
    route_flush(dl); /* transport_maps error: and defer: (route.c) */
    queue_due_free(due);
    for (struct dest *d = dl->dests; d; d = d->next)
        dest_run(d);
    if (n == LEASE_BATCH || dl->want_lease) {
        /* More may be due (a full batch, or new work arrived meanwhile). */
        sched_lease_in(dl, 0);
        return;
    }
    /* Nothing more due now: wake at the schedule's next due time. */
    uv_timer_stop(&dl->due_timer);
    sched_arm_due(dl);
}

/*
 * Set the due timer for the schedule's next due time, if that is earlier
 * than the timer already set. Bounded: at least 100 ms (due work that could
 * not be taken must not make a busy loop) and at most a minute (a missed
 * change costs at most that).
 */
void sched_arm_due(struct delivery *dl)
{
    if (dl->closing || dl->stopping || !dl->q)
        return;
    int64_t when = 0;
    uint64_t delay = 60000;
    if (queue_next_due(dl->q, &when) == 0) {
        int64_t d = when - dl_now(dl);
        if (d < 100)
            d = 100;
        if ((uint64_t)d < delay)
            delay = (uint64_t)d;
    }
    if (uv_is_active((uv_handle_t *)&dl->due_timer) && uv_timer_get_due_in(&dl->due_timer) <= delay)
        return;
    sched_lease_in(dl, delay);
}

static void lease_now(struct delivery *dl)
{
    if (dl->closing || dl->stopping)
        return;
    if (pause_all(dl))
        return;
    if (dl->leasing) {
        dl->want_lease = true;
        return;
    }
    if (dl->inflight >= INFLIGHT_MAX) {
        dl->want_lease = true;
        return;
    }
    dl->want_lease = false;
    size_t max = LEASE_BATCH;
    if (INFLIGHT_MAX - dl->inflight < max)
        max = INFLIGHT_MAX - dl->inflight;
    int rc = queue_lease(dl->q, max, on_lease, dl);
    if (rc != 0) {
        log_warn(QCOMP, "cannot take due mail from the queue: %s", err_str(rc));
        sched_lease_in(dl, 5000);
        return;
    }
    dl->leasing = true;
    dl->pending_reqs++;
}

void sched_on_due_timer(uv_timer_t *t)
{
    struct delivery *dl = t->data;
    lease_now(dl);
}

static void on_kick_timer(uv_timer_t *t)
{
    struct delivery *dl = t->data;
    lease_now(dl);
    if (dl->want_lease && dl->leasing)
        return; /* on_lease will see want_lease */
}

void sched_lease_in(struct delivery *dl, uint64_t delay_ms)
{
    if (dl->closing || dl->stopping)
        return;
    if (delay_ms == 0) {
        /* Never lease inside a callback chain: from the loop, at once. */
        uv_timer_start(&dl->kick_timer, on_kick_timer, 0, 0);
        return;
    }
    uv_timer_start(&dl->due_timer, sched_on_due_timer, delay_ms, 0);
}

/* Idle sessions past smtp_connection_cache_time_limit say QUIT. */
void sched_on_sweep(uv_timer_t *t)
{
    struct delivery *dl = t->data;
    int64_t now = dl_now(dl);
    int64_t limit = dl->conf->smtp_connection_cache_time_limit * 1000;
    bool any = false;
    for (struct dest *d = dl->dests; d; d = d->next) {
        struct conn *cn = d->idle;
        while (cn) {
            struct conn *next = cn->next;
            if (dl->stopping || now - cn->idle_since >= limit) {
                conn_idle_remove(cn);
                smtp_client_quit(cn->c);
            } else {
                any = true;
            }
            cn = next;
        }
    }
    if (!any)
        uv_timer_stop(&dl->sweep_timer);
}
