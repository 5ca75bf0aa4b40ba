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
#include "verdict.h"

/* ---- bounce ------------------------------------------------------------------ */

int delivery_admin_bounce(struct delivery *dl, const char *id, const char *reason,
                          delivery_admin_cb cb, void *arg)
{
    if (!dl || dl->closing || !dl->q || !cb)
        return ERR_CLOSED;
    struct queue_message *qm = NULL;
    int rc = queue_message_read(dl->q, id, &qm);
    if (rc != 0)
        return rc;
    struct dsn_item *items = calloc(qm->n_rcpts ? qm->n_rcpts : 1, sizeof(*items));
    if (!items) {
        queue_message_free(qm);
        return ERR_NOMEM;
    }
    struct verdict v;
    verdict_admin(&v);
    char text[600];
    snprintf(text, sizeof(text), "bounced by the mail administrator%s%.500s",
             reason && reason[0] ? ": " : "", reason ? reason : "");
    size_t n = 0, k = 0;
    int64_t now = dl_now(dl);
    for (size_t i = 0; i < qm->n_rcpts; i++) {
        const struct queue_rcpt *r = &qm->rcpts[i];
        if (r->state != QUEUE_RCPT_QUEUED && r->state != QUEUE_RCPT_DEFERRED &&
            r->state != QUEUE_RCPT_HELD)
            continue;
        if (r->state == QUEUE_RCPT_HELD && r->next_ms > now)
            continue; /* held while its attempt is in flight */
        struct dsn_item *it = &items[n++];
        it->rcpt = r->index;
        str_copy(it->dsn, v.status, sizeof(it->dsn));
        it->text = dl_strdup(text);
        str_copy(it->remote_mta, r->has_result && r->last.mx ? r->last.mx : "",
                 sizeof(it->remote_mta));
        it->last_attempt_ms = r->has_result ? r->last.when_ms : 0;
        struct smtp_outcome o;
        memset(&o, 0, sizeof(o));
        o.action = verdict_smtp_action(v.action);
        str_copy(o.status, v.status, sizeof(o.status));
        str_copy(o.text, text, sizeof(o.text));
        deliver_log_rcpt(id, r->addr, "none", qm->env.arrival_ms, now, now, now, now, false, &o,
                         NULL);
        if (deliver_wants_failure_dsn(r->notify))
            k++;
    }
    if (n == 0) {
        dsn_items_free(items, n);
        queue_message_free(qm);
        return ERR_AGAIN;
    }
    /* The original, when a DSN will carry it. */
    char *body = NULL;
    size_t blen = 0;
    if (qm->env.sender[0] && k > 0) {
        body = dl_read_body(dl, id, qm->env.size, &blen);
        if (!body) {
            dsn_items_free(items, n);
            queue_message_free(qm);
            return ERR_CORRUPT;
        }
    }
    struct dsn_opts o = {.keep_on_error = true, .cb = cb, .arg = arg};
    rc = dsn_send(dl, id, qm, (struct view){body ? body : "", blen}, DSN_FAILED, items, n, &o);
    free(body);
    queue_message_free(qm);
    return rc;
}
