/*
 * conn.c - connections: one SMTP client session of a destination. A new
 * connection walks the destination's addresses: MX hosts in preference
 * order (RFC 5321 5.1; dns/ shuffles equal preferences), every address of
 * each (IPv6 and IPv4), at most smtp_mx_address_limit per attempt. It moves
 * to the next address on any failure before the session is ready
 * (connection refused or timed out, a 4xx or 5xx greeting, EHLO refused,
 * TLS failure). With smtp_tls_security_level=may a failed TLS handshake is
 * retried once on the same address in plaintext. A connection that
 * finished a job takes the next job of its destination (RSET between, up
 * to smtp_connection_reuse_count_limit messages); with no job waiting it is
 * kept idle for smtp_connection_cache_time_limit, then says QUIT.
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

/* ---- connections ----------------------------------------------------------------------- */

static void conn_event(struct smtp_client *c, enum smtp_event ev, void *arg);
static void conn_connect(struct conn *cn);

static void conn_release(struct conn *cn)
{
    struct dest *d = cn->dest;
    struct delivery *dl = d->dl;
    d->nconns--;
    dl->nconns--;
    route_conn_closed(cn);
    /* A dead destination's probe (its only connection) is over. */
    if (d->dead.dead)
        d->dead.probing = false;
    if (cn->all_prev)
        cn->all_prev->all_next = cn->all_next;
    else
        dl->conns = cn->all_next;
    if (cn->all_next)
        cn->all_next->all_prev = cn->all_prev;
    free(cn);
}

void conn_idle_remove(struct conn *cn)
{
    struct conn **pp = &cn->dest->idle;
    while (*pp && *pp != cn)
        pp = &(*pp)->next;
    if (*pp)
        *pp = cn->next;
    cn->next = NULL;
    cn->idle = false;
}

/* Give a job to a ready connection. false if it could not start (the job
 * is then finished with an error and the connection quits). */
bool conn_send(struct conn *cn, struct job *j)
{
    struct delivery *dl = cn->dest->dl;
    cn->job = j;
    if (JOB_TLS_OPTIONAL(j))
        log_info(COMPONENT, "%s: TLS-Required: No: MTA-STS and DANE ignored for this message",
                 j->id);
    if (j->conn_ms == 0)
        j->conn_ms = dl_now(dl);
    if (j->ready_ms == 0)
        j->ready_ms = dl_now(dl);
    str_copy(j->relay, smtp_client_relay(cn->c), sizeof(j->relay));
    str_copy(j->ip, smtp_client_ip(cn->c), sizeof(j->ip));
    conn_tls_summary(cn->c, j->tls, sizeof(j->tls));
    job_policy(j, cn);
    int rc = job_load(dl, j);
    if (rc != 0) {
        cn->job = NULL;
        char text[200];
        snprintf(text, sizeof(text), "cannot read the message from the queue: %s", err_str(rc));
        struct verdict v;
        verdict_local(&v);
        job_fail(dl, j, &v, text);
        smtp_client_quit(cn->c);
        return false;
    }
    cn->msgs_before = smtp_client_messages(cn->c);
    if (cn->msgs_before > 0)
        metrics_delivery_cache_hit(); /* a session that carried mail before */
    rc = smtp_client_send(cn->c, &j->msg);
    if (rc != 0) {
        cn->job = NULL;
        struct verdict v;
        verdict_local(&v);
        job_fail(dl, j, &v, "internal error: session not ready");
        smtp_client_quit(cn->c);
        return false;
    }
    return true;
}

struct job *dest_pop(struct dest *d)
{
    struct job *j = d->head;
    if (j) {
        d->head = j->next;
        if (!d->head)
            d->tail = NULL;
        j->next = NULL;
        d->njobs--;
    }
    return j;
}

static void dest_push_front(struct dest *d, struct job *j)
{
    j->next = d->head;
    d->head = j;
    if (!d->tail)
        d->tail = j;
    d->njobs++;
}

/* The session of cn is idle: the next job, the idle cache, or QUIT. */
static void conn_next(struct conn *cn)
{
    struct dest *d = cn->dest;
    struct delivery *dl = d->dl;
    /* A TLS-Required: No session may have skipped the policy: it carries
     * no other mail. */
    if (!smtp_client_usable(cn->c) || dl->stopping || cn->tls_optional ||
        smtp_client_messages(cn->c) >= (unsigned)dl->conf->smtp_connection_reuse_count_limit) {
        smtp_client_quit(cn->c);
        return;
    }
    struct job *j = d->head && route_may_send(d) ? dest_pop(d) : NULL;
    if (j) {
        j->conn_ms = dl_now(dl);
        j->ready_ms = j->conn_ms;
        str_copy(j->mx, cn->last_relay, sizeof(j->mx));
        conn_send(cn, j);
        return;
    }
    cn->idle = true;
    cn->idle_since = dl_now(dl);
    cn->next = d->idle;
    d->idle = cn;
    if (!uv_is_active((uv_handle_t *)&dl->sweep_timer))
        uv_timer_start(&dl->sweep_timer, sched_on_sweep, 500, 500);
}

const struct target *conn_target(const struct conn *cn)
{
    return &cn->dest->targets[cn->target];
}

static void conn_event(struct smtp_client *c, enum smtp_event ev, void *arg)
{
    struct conn *cn = arg;
    struct dest *d = cn->dest;
    struct delivery *dl = d->dl;
    switch (ev) {
    case SMTP_EV_READY: {
        route_conn_ready(d);
        conn_ready_policy(cn, smtp_client_tls(c));
        conn_tlsrpt(cn, smtp_client_tls(c), NULL);
        if (cn->job) {
            cn->job->ready_ms = dl_now(dl);
            struct job *j = cn->job;
            str_copy(j->mx, conn_target(cn)->host, sizeof(j->mx));
            str_copy(cn->last_relay, conn_target(cn)->host, sizeof(cn->last_relay));
            conn_send(cn, j);
        } else {
            conn_next(cn);
        }
        break;
    }
    case SMTP_EV_DONE: {
        struct job *j = cn->job;
        cn->job = NULL;
        if (!j)
            break;
        const struct smtp_outcome *first = j->n ? &j->srcpt[0].out : NULL;
        for (size_t i = 0; j->srcpt && i < j->n; i++)
            if (j->srcpt[i].out.action == SMTP_ACT_SENT) {
                route_delivered(d); /* the window grows (route.c) */
                break;
            }
        if (!j->msg.attempted && dl->closing) {
            for (size_t i = 0; i < j->n; i++) {
                dl_unlease(dl, j->id, j->r[i].idx);
                dl->inflight--;
            }
            job_free(j);
        } else if (!j->msg.attempted && cn->msgs_before > 0 && first && first->err != 0) {
            /* A reused session failed before MAIL (RSET refused, connection
             * gone): not an attempt. The job goes back for another session. */
            for (size_t i = 0; i < j->n; i++)
                memset(&j->srcpt[i].out, 0, sizeof(j->srcpt[i].out));
            j->conn_ms = j->ready_ms = 0;
            dest_push_front(d, j);
        } else {
            job_finish(dl, j, NULL, NULL);
        }
        if (smtp_client_usable(c))
            conn_next(cn);
        break;
    }
    case SMTP_EV_CLOSED: {
        const struct smtp_outcome *res = smtp_client_result(c);
        if (cn->idle)
            conn_idle_remove(cn);
        if (cn->job) {
            /* Failed before the session was ready: this address is done. */
            cn->last = *res;
            /* Postfix's relay=none: no connection was made. */
            str_copy(cn->job->relay, verdict_no_connection(res) ? "none" : smtp_client_relay(c),
                     sizeof(cn->job->relay));
            str_copy(cn->job->mx, conn_target(cn)->host, sizeof(cn->job->mx));
            str_copy(cn->job->ip, smtp_client_ip(c), sizeof(cn->job->ip));
            conn_closed_policy(cn, res, smtp_client_tls(c));
            conn_tlsrpt(cn, smtp_client_tls(c), res);
            job_policy(cn->job, cn);
            bool tls_failed = res->err == ERR_TLS && smtp_client_tls(c) != NULL;
            smtp_client_free(c);
            metrics_delivery_session(-1);
            cn->c = NULL;
            if (cn->mode == SMTP_TLS_MAY && tls_failed && !cn->plain_retry && !dl->closing) {
                /* Opportunistic TLS: retry the same address without it. */
                cn->plain_retry = true;
                cn->mode = SMTP_TLS_NONE;
            } else {
                cn->target++;
                cn->plain_retry = false;
            }
            conn_connect(cn);
            break;
        }
        smtp_client_free(c);
        metrics_delivery_session(-1);
        cn->c = NULL;
        conn_release(cn);
        if (!dl->closing)
            dest_run(d);
        deliver_maybe_free(dl);
        break;
    }
    }
}

enum smtp_tls_mode conn_tls_level(const struct delivery *dl)
{
    const char *l = dl->conf->smtp_tls_security_level;
    if (l && strcmp(l, "none") == 0)
        return SMTP_TLS_NONE;
    if (l && strcmp(l, "verify") == 0)
        return SMTP_TLS_VERIFY;
    return SMTP_TLS_MAY;
}

/* Start a session on the connection's current target, or end the job when
 * the addresses are used up. */
static void conn_connect(struct conn *cn)
{
    struct dest *d = cn->dest;
    struct delivery *dl = d->dl;
    struct job *j = cn->job;
    size_t limit = (size_t)dl->conf->smtp_mx_address_limit;
    while (!cn->plain_retry && !dl->closing && cn->target < d->ntargets) {
        conn_policy(cn);
        /* RFC 8461 4.1 and 5 (enforce): an MX host that matches no pattern
         * of the policy is never used. */
        if (conn_target_allowed(cn))
            break;
        if (j)
            job_policy(j, cn);
        if (cn->dane != VERDICT_DANE_NONE) {
            conn_tlsrpt_skipped(cn);
            cn->target++;
            continue;
        }
        log_info(COMPONENT, "%s: MTA-STS enforce id=%s: MX host %s matches no pattern: skipped",
                 d->name, d->sts_id, conn_target(cn)->host);
        cn->target++;
    }
    if (dl->closing || cn->target >= d->ntargets || (cn->tried >= limit && !cn->plain_retry)) {
        cn->job = NULL;
        if (dl->closing) {
            for (size_t i = 0; i < j->n; i++) {
                dl_unlease(dl, j->id, j->r[i].idx);
                dl->inflight--;
            }
            job_free(j);
        } else {
            /* No session became ready: the verdict says what the attempt
             * means (a deferral, whatever the hosts said). */
            struct verdict_attempt_in in = {
                .policy_status = cn->have_sts_fail ? cn->sts_fail.status : NULL,
                .last = cn->last.action != SMTP_ACT_NONE ? &cn->last : NULL,
                .sts_enforce =
                    cn->req.origin == POLICY_ORIGIN_STS && cn->req.sts_mode == POLICY_MODE_ENFORCE,
            };
            struct verdict v;
            verdict_attempt(&in, &v);
            if (v.reason == VR_ALL_ADDRESSES_FAILED)
                route_conn_failed(d, cn->last.text);
            if (v.sts_recheck)
                d->sts_recheck = true;
            if (v.reason == VR_NO_ADDRESS) {
                job_fail(dl, j, &v, "no address to deliver to");
            } else {
                struct smtp_outcome o = v.reason == VR_POLICY ? cn->sts_fail : cn->last;
                if (v.reason == VR_POLICY && cn->req.origin == POLICY_ORIGIN_STS)
                    dl->sts_enforce_failures++;
                job_finish(dl, j, &o, &v);
            }
        }
        conn_release(cn);
        if (!dl->closing)
            dest_run(d);
        deliver_maybe_free(dl);
        return;
    }
    const struct target *t = conn_target(cn);
    if (!cn->plain_retry)
        cn->mode = conn_tls_mode(cn);
    const struct conf *cf = dl->conf;
    struct smtp_client_opts o = {
        .helo_name = dl->helo,
        .host = t->host,
        .addr = (const struct sockaddr *)&t->addr,
        .tls = cn->mode,
        .verify_host = t->host,
        .tls_ctx = dl->tls_ctx,
        .tls_check = conn_tls_check,
        .timeouts =
            {
                .connect = (uint32_t)(cf->smtp_connect_timeout * 1000),
                .greeting = (uint32_t)(cf->smtp_helo_timeout * 1000),
                .helo = (uint32_t)(cf->smtp_helo_timeout * 1000),
                .starttls = (uint32_t)(cf->smtp_starttls_timeout * 1000),
                .mail = (uint32_t)(cf->smtp_mail_timeout * 1000),
                .rcpt = (uint32_t)(cf->smtp_rcpt_timeout * 1000),
                .data_init = (uint32_t)(cf->smtp_data_init_timeout * 1000),
                .data_block = (uint32_t)(cf->smtp_data_xfer_timeout * 1000),
                .data_done = (uint32_t)(cf->smtp_data_done_timeout * 1000),
                .rset = (uint32_t)(cf->smtp_rset_timeout * 1000),
                .quit = (uint32_t)(cf->smtp_quit_timeout * 1000),
            },
        .cb = conn_event,
        .arg = cn,
    };
    /* SMTP AUTH to the next hop (auth.c): the client is told, and copies,
     * the credentials; TLS before them unless smtp_sasl_tls_required = no. */
    conn_auth(cn, &o.auth_user, &o.auth_password);
    o.auth_tls_required = cf->smtp_sasl_tls_required;
    if (!cn->plain_retry)
        cn->tried++;
    cn->rpt_done = false;
    int err = 0;
    cn->c = smtp_client_new(dl->loop, &o, &err);
    if (cn->c)
        metrics_delivery_session(+1);
    if (!cn->c) {
        memset(&cn->last, 0, sizeof(cn->last));
        cn->last.action = SMTP_ACT_DEFER;
        str_copy(cn->last.status, "4.3.0", sizeof(cn->last.status));
        snprintf(cn->last.text, sizeof(cn->last.text), "cannot start a session: %s", err_str(err));
        cn->target = d->ntargets; /* give up on this attempt */
        conn_connect(cn);
    }
}

void conn_new(struct dest *d, struct job *j)
{
    struct delivery *dl = d->dl;
    struct conn *cn = calloc(1, sizeof(*cn));
    if (!cn) {
        struct verdict v;
        verdict_local(&v);
        job_fail(dl, j, &v, "out of memory");
        return;
    }
    cn->dest = d;
    cn->job = j;
    cn->tls_optional = JOB_TLS_OPTIONAL(j);
    cn->lease = d->spare_lease; /* route_may_connect() took it for this one */
    d->spare_lease = 0;
    j->conn_ms = dl_now(dl);
    d->nconns++;
    dl->nconns++;
    cn->all_next = dl->conns;
    if (dl->conns)
        dl->conns->all_prev = cn;
    dl->conns = cn;
    conn_connect(cn);
}
