/*
 * admin.c - the operator's bounce: a message bounced now through the control
 * socket (convoyctl queue bounce).
 *
 * The DSN (RFC 3464, through the one DSN path in dsn.c, as an expiry bounce
 * is made) says "Action: failed", "Status: 5.0.0" and the operator's
 * reason; it is queued first, and only after that commit are the
 * recipients marked bounced, so a failure leaves the message as it was.
 * Recipients in flight (ACTIVE) are left alone: their attempt is going on.
 * No DSN for a null sender or for recipients whose NOTIFY excludes FAILURE
 * (they are bounced silently).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "conf.h"
#include "deliver_int.h"
#include "delivery.h"
#include "queue.h"

/* ---- bounce ------------------------------------------------------------------ */

struct abounce {
    struct delivery *dl;
    char id[QUEUE_ID_LEN + 1];
    char text[600];
    struct buf dsn;
    uint32_t *rcpts;
    size_t n;
    size_t pending;
    int status;
    delivery_admin_cb cb;
    void *arg;
};

static void abounce_free(struct abounce *b)
{
    buf_free(&b->dsn);
    free(b->rcpts);
    free(b);
}

static void on_rcpt_bounced(void *arg, int status)
{
    struct abounce *b = arg;
    if (status != 0 && status != ERR_NOTFOUND && b->status == 0)
        b->status = status;
    if (--b->pending > 0)
        return;
    b->cb(b->arg, b->status, b->n);
    abounce_free(b);
}

/* The DSN is committed (or there is none): mark the recipients bounced.
 * Returns how many requests were made; with none, nothing was called and
 * b is still the caller's. */
static size_t mark_bounced(struct abounce *b)
{
    struct queue_result res = {.smtp_code = 0,
                               .dsn = "5.0.0",
                               .text = b->text,
                               .mx = "",
                               .ip = "",
                               .tls = "",
                               .sts_mode = "",
                               .sts_id = ""};
    size_t made = 0;
    b->pending = 1; /* held until every request is made */
    for (size_t i = 0; i < b->n; i++) {
        if (queue_bounce(b->dl->q, b->id, b->rcpts[i], &res, on_rcpt_bounced, b) == 0)
            made++, b->pending++;
        else if (b->status == 0)
            b->status = ERR_CLOSED;
    }
    if (made)
        on_rcpt_bounced(b, 0); /* the last callback is one of the requests' */
    return made;
}

static void on_admin_dsn_queued(void *arg, int status, const char *dsn_id)
{
    struct abounce *b = arg;
    if (status != 0) {
        log_warn(QCOMP, "%s: cannot queue the non-delivery notification: %s", b->id,
                 err_str(status));
        b->cb(b->arg, status, 0);
        abounce_free(b);
        return;
    }
    log_info(QCOMP, "%s: sender non-delivery notification: %s", b->id, dsn_id);
    buf_free(&b->dsn);
    if (mark_bounced(b) == 0) {
        b->cb(b->arg, ERR_CLOSED, 0);
        abounce_free(b);
    }
}

int delivery_admin_bounce(struct delivery *dl, const char *id, const char *reason,
                          delivery_admin_cb cb, void *arg)
{
    if (!dl || dl->closing || !dl->q || !cb)
        return ERR_CLOSED;
    struct queue_message *qm = NULL;
    int rc = queue_message_read(dl->q, id, &qm);
    if (rc != 0)
        return rc;
    struct abounce *b = calloc(1, sizeof(*b));
    struct dsn_rcpt *drs = calloc(qm->n_rcpts, sizeof(*drs));
    if (b)
        b->rcpts = calloc(qm->n_rcpts, sizeof(*b->rcpts));
    if (!b || !drs || !b->rcpts) {
        if (b)
            free(b->rcpts);
        free(b);
        free(drs);
        queue_message_free(qm);
        return ERR_NOMEM;
    }
    b->dl = dl;
    b->cb = cb;
    b->arg = arg;
    str_copy(b->id, id, sizeof(b->id));
    snprintf(b->text, sizeof(b->text), "bounced by the mail administrator%s%.500s",
             reason && reason[0] ? ": " : "", reason ? reason : "");
    buf_init(&b->dsn, DSN_MAX);
    size_t k = 0;
    int64_t now = dl_now(dl);
    for (size_t i = 0; i < qm->n_rcpts; i++) {
        const struct queue_rcpt *r = &qm->rcpts[i];
        if (r->state != QUEUE_RCPT_QUEUED && r->state != QUEUE_RCPT_DEFERRED &&
            r->state != QUEUE_RCPT_HELD)
            continue;
        if (r->state == QUEUE_RCPT_HELD && r->next_ms > now)
            continue; /* held while its attempt is in flight */
        b->rcpts[b->n++] = r->index;
        char delay[24];
        deliver_format_delay(now - qm->env.arrival_ms, delay, sizeof(delay));
        log_info("smtp",
                 "%s: to=<%s>, relay=none, delay=%s, delays=%s/0/0/0, dsn=5.0.0, "
                 "status=bounced (%s)",
                 id, r->addr, delay, delay, b->text);
        if (!deliver_wants_failure_dsn(r->notify))
            continue;
        drs[k].addr = r->addr;
        drs[k].orcpt = r->orcpt[0] ? r->orcpt : NULL;
        drs[k].action = "failed";
        drs[k].status = "5.0.0";
        drs[k].remote_mta = r->has_result && r->last.mx[0] ? r->last.mx : NULL;
        drs[k].diag = NULL;
        drs[k].reason = b->text;
        drs[k].last_attempt_ms = r->has_result ? r->last.when_ms : 0;
        k++;
    }
    if (b->n == 0) {
        free(drs);
        queue_message_free(qm);
        abounce_free(b);
        return ERR_AGAIN;
    }
    if (!qm->env.sender[0] || k == 0) {
        /* RFC 3464 / RFC 5321 6.1: never a DSN to the null sender. */
        free(drs);
        queue_message_free(qm);
        if (mark_bounced(b) == 0) {
            abounce_free(b);
            return ERR_CLOSED;
        }
        return 0;
    }
    char *body = malloc(qm->env.size + 1);
    size_t off = 0;
    while (body && off < qm->env.size) {
        size_t got = 0;
        if (queue_body_read(dl->q, id, off, body + off, qm->env.size - off, &got) != 0 || got == 0)
            break;
        off += got;
    }
    rc = !body ? ERR_NOMEM : off != qm->env.size ? ERR_CORRUPT : 0;
    const char *host = dl->helo;
    struct dsn_msg d = {
        .reporting_mta = host,
        .queue_id = id,
        .sender = qm->env.sender,
        .envid = qm->env.envid,
        .arrival_ms = qm->env.arrival_ms,
        .now_ms = now,
        .ret_full = qm->env.ret == QUEUE_RET_FULL,
        .original = {body ? body : "", off},
        .rcpts = drs,
        .nrcpt = k,
    };
    if (rc == 0)
        rc = dsn_build(&d, &b->dsn);
    if (rc == ERR_TOOBIG && d.ret_full) {
        buf_reset(&b->dsn);
        d.ret_full = false;
        rc = dsn_build(&d, &b->dsn);
    }
    if (rc == 0) {
        struct queue_envelope env = {.sender = "",
                                     .client_name = "localhost",
                                     .client_addr = "127.0.0.1",
                                     .helo = host,
                                     .auth_user = "",
                                     .tls = "",
                                     .envid = "",
                                     .ret = QUEUE_RET_NONE,
                                     .flags = 0};
        struct queue_rcpt_in to = {.addr = qm->env.sender, .orcpt = NULL, .notify = 0};
        rc = queue_submit(dl->q, &env, &to, 1, b->dsn.data, b->dsn.len, on_admin_dsn_queued, b);
    }
    free(body);
    free(drs);
    queue_message_free(qm);
    if (rc != 0) {
        abounce_free(b);
        return rc;
    }
    return 0;
}
