/*
 * signing.c - DKIM signing at acceptance: the key table of the
 * configuration in force (dkim_key_table), and for each accepted message
 * whose From domain has keys, the signatures put on top of it before the
 * signed copy is queued.
 *
 * Invariants:
 *  - The smtp module has already added Received:, Date: and Message-ID:
 *    (so the last two are signed when they were added), and nothing later
 *    changes a byte of the queued copy: the delivered copy is the signed
 *    one.
 *  - RSA signatures (about a millisecond each) are made on the thread pool
 *    while the session waits for its answer; Ed25519 ones (tens of
 *    microseconds) inline. Either way the client's 250 comes from the
 *    queue's callback, after the sync.
 *  - A job holds references to the key table and the configuration it
 *    started with, so a reload meanwhile changes nothing for it.
 */
#include <stdlib.h>
#include <string.h>

#include "dkim.h"
#include "mta.h"
#include "policy.h"
#include "smtp.h"

/* Most signatures on one message (lines of the key table for one domain). */
#define MAX_SIGNERS 8

/* A domain in lower-case A-label form (IDNA 2008): the key table's and the
 * From address's domains are compared in it. */
static int domain_alabel(const char *in, char *out, size_t size)
{
    char norm[POLICY_NAME_MAX];
    int rc = policy_domain_normalize(in, norm);
    if (rc == 0 && str_copy(out, norm, size) >= size)
        rc = ERR_TOOBIG;
    return rc;
}

/* One message being signed: what the thread pool needs, and the signed
 * copy that is queued. Owned by the loop thread except between
 * uv_queue_work() and sign_done(). */
struct sign_job {
    uv_work_t work;
    struct mta *m;
    mta_enqueue_fn enqueue;
    struct smtpd_session *s;
    struct smtpd_message msg; /* shallow: valid until smtpd_session_done() */
    struct conf *conf;        /* for dkim_signed_headers */
    struct dkim_keytable *keys;
    const struct dkim_signer *signers[MAX_SIGNERS];
    size_t n_signers;
    struct dkim_headers h;
    int64_t t;
    int status;
    struct buf why;
    struct buf out; /* the signatures, then the message */
};

static void job_free(struct sign_job *j)
{
    dkim_headers_free(&j->h);
    dkim_keytable_free(j->keys);
    conf_unref(j->conf);
    buf_free(&j->why);
    buf_free(&j->out);
    free(j);
}

static void job_submitted(void *arg, int status, const char *id)
{
    struct sign_job *j = arg;
    /* One line per signature, as OpenDKIM logs it next to Postfix. */
    for (size_t i = 0; status == 0 && i < j->n_signers; i++)
        log_info("smtpd", "%s: DKIM-Signature field added (d=%s, s=%s, a=%s)", id ? id : "-",
                 j->signers[i]->domain, j->signers[i]->selector,
                 dkim_alg_name(dkim_key_alg(j->signers[i]->key)));
    smtpd_session_done(j->s, status, id);
    job_free(j);
}

/* Make every signature, then the signed copy. Runs on the thread pool for
 * RSA keys: touches nothing but the job, the immutable keys and the
 * message. */
static void sign_run(uv_work_t *w)
{
    struct sign_job *j = w->data;
    const struct conf_list *names = &j->conf->dkim_signed_headers;
    for (size_t i = 0; i < j->n_signers && j->status == 0; i++) {
        const struct dkim_signer *sg = j->signers[i];
        struct dkim_sign_opts o = {
            .domain = sg->domain,
            .selector = sg->selector,
            .key = sg->key,
            .headers = (const char *const *)names->v,
            .n_headers = names->n,
            .t = j->t,
        };
        j->status = dkim_sign(&o, j->msg.body.ptr, j->msg.body.len, &j->h, &j->out, &j->why);
    }
    if (j->status == 0)
        j->status = buf_append(&j->out, j->msg.body.ptr, j->msg.body.len);
}

static void sign_done(uv_work_t *w, int uv_status)
{
    struct sign_job *j = w->data;
    if (uv_status != 0 && j->status == 0)
        j->status = ERR_CLOSED;
    if (j->status != 0) {
        log_err("smtpd", "DKIM signing failed, message refused with a temporary error: %s",
                j->why.len ? j->why.data : err_str(j->status));
        smtpd_session_done(j->s, ERR_IO, NULL);
        job_free(j);
        return;
    }
    int rc = j->enqueue(j->m, &j->msg, j->out.data, j->out.len, job_submitted, j);
    if (rc != 0) {
        smtpd_session_done(j->s, rc, NULL);
        job_free(j);
    }
}

/* Find the keys for the message's From domain. 0 with *job NULL when the
 * message is not to be signed. */
static int sign_prepare(struct mta *m, struct dkim_keytable *keys, struct smtpd_session *s,
                        const struct smtpd_message *msg, struct sign_job **job)
{
    *job = NULL;
    if (!keys)
        return 0;
    struct sign_job *j = calloc(1, sizeof(*j));
    if (!j)
        return ERR_NOMEM;
    buf_init(&j->why, 1024);
    buf_init(&j->out, msg->body.len + 64 * 1024);
    char from[256], alabel[256];
    int rc = dkim_headers_parse(msg->body.ptr, msg->body.len, &j->h);
    if (rc == 0)
        rc = dkim_from_domain(msg->body.ptr, &j->h, from, sizeof(from));
    if (rc == 0)
        rc = domain_alabel(from, alabel, sizeof(alabel));
    if (rc == 0)
        j->n_signers = dkim_keytable_find(keys, alabel, j->signers, MAX_SIGNERS);
    if (rc != 0 || j->n_signers == 0) {
        /* No From, several, no usable domain, or no key for it: the
         * message goes out unsigned, as the operator has no key for it. */
        if (rc != 0 && rc != ERR_NOTFOUND)
            log_debug("smtpd", "DKIM: not signed, From domain not usable (%s)", err_str(rc));
        job_free(j);
        return 0;
    }
    if (j->n_signers > MAX_SIGNERS)
        j->n_signers = MAX_SIGNERS;
    j->m = m;
    j->s = s;
    j->msg = *msg;
    j->conf = conf_ref(m->conf);
    j->keys = dkim_keytable_ref(keys);
    j->t = time_now_ms() / 1000;
    j->work.data = j;
    *job = j;
    return 0;
}

/* The key table of a snapshot: *out NULL when dkim_key_table is empty. */
int signing_load(const struct conf *c, struct dkim_keytable **out, struct buf *err)
{
    *out = NULL;
    if (!c->dkim_key_table || !*c->dkim_key_table)
        return 0;
    struct buf why;
    buf_init(&why, 64 * 1024);
    *out = dkim_keytable_load(c->dkim_key_table, domain_alabel, &why);
    if (!*out)
        buf_printf(err, "dkim_key_table: %s", why.data ? why.data : "cannot load\n");
    buf_free(&why);
    return *out ? 0 : ERR_INVAL;
}

int signing_take(struct mta *m, struct dkim_keytable *keys, struct smtpd_session *s,
                 const struct smtpd_message *msg, mta_enqueue_fn enqueue)
{
    struct sign_job *j;
    int rc = sign_prepare(m, keys, s, msg, &j);
    if (rc != 0 || !j)
        return rc;
    j->enqueue = enqueue;
    bool rsa = false;
    for (size_t i = 0; i < j->n_signers; i++)
        rsa |= dkim_key_alg(j->signers[i]->key) == DKIM_RSA_SHA256;
    /* The session waits for smtpd_session_done() meanwhile: the client gets
     * its 250 only after the signed copy is synced. */
    if (!rsa || uv_queue_work(m->loop, &j->work, sign_run, sign_done) != 0) {
        sign_run(&j->work);
        sign_done(&j->work, 0);
    }
    return 1;
}
