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
    struct view text;     /* what is signed: the message, or its header fields */
    struct buf text_copy; /* the header fields of a streamed message */
    bool has_bh;          /* body_hash is the body's (streamed): out gets only
                             the signatures */
    uint8_t body_hash[32];
    int64_t t;
    int status;
    struct buf why;
    struct buf out; /* the signatures, then the message unless has_bh */
};

static void job_free(struct sign_job *j)
{
    dkim_headers_free(&j->h);
    dkim_keytable_free(j->keys);
    conf_unref(j->conf);
    buf_free(&j->why);
    buf_free(&j->out);
    buf_free(&j->text_copy);
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
            .body_hash = j->has_bh ? j->body_hash : NULL,
        };
        j->status = dkim_sign(&o, j->text.ptr, j->text.len, &j->h, &j->out, &j->why);
    }
    if (j->status == 0 && !j->has_bh)
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
        if (j->has_bh) /* let go of the streamed body */
            j->enqueue(j->m, j->s, &j->msg, NULL, 0, NULL, NULL);
        smtpd_session_done(j->s, ERR_IO, NULL);
        job_free(j);
        return;
    }
    int rc = j->enqueue(j->m, j->s, &j->msg, j->out.data, j->out.len, job_submitted, j);
    if (rc != 0) {
        smtpd_session_done(j->s, rc, NULL);
        job_free(j);
    }
}

/* The keys for the From domain of the message or header section text
 * (parsed into h): how many (0: not to be signed). */
static size_t find_signers(struct dkim_keytable *keys, struct view text, struct dkim_headers *h,
                           const struct dkim_signer **signers)
{
    char from[256], alabel[256];
    int rc = dkim_headers_parse(text.ptr, text.len, h);
    if (rc == 0)
        rc = dkim_from_domain(text.ptr, h, from, sizeof(from));
    if (rc == 0)
        rc = domain_alabel(from, alabel, sizeof(alabel));
    if (rc != 0) {
        /* No From, several, no usable domain: the message goes out
         * unsigned, as the operator has no key for it. */
        if (rc != ERR_NOTFOUND)
            log_debug("smtpd", "DKIM: not signed, From domain not usable (%s)", err_str(rc));
        return 0;
    }
    size_t n = dkim_keytable_find(keys, alabel, signers, MAX_SIGNERS);
    return n > MAX_SIGNERS ? MAX_SIGNERS : n;
}

bool signing_wanted(struct dkim_keytable *keys, const char *head, size_t len)
{
    if (!keys)
        return false;
    struct dkim_headers h = {0};
    const struct dkim_signer *signers[MAX_SIGNERS];
    size_t n = find_signers(keys, (struct view){head, len}, &h, signers);
    dkim_headers_free(&h);
    return n > 0;
}

/* Find the keys for the message's From domain. 0 with *job NULL when the
 * message is not to be signed. */
static int sign_prepare(struct mta *m, struct dkim_keytable *keys, struct smtpd_session *s,
                        const struct smtpd_message *msg, const struct signing_streamed *st,
                        struct sign_job **job)
{
    *job = NULL;
    if (!keys)
        return 0;
    struct sign_job *j = calloc(1, sizeof(*j));
    if (!j)
        return ERR_NOMEM;
    buf_init(&j->why, 1024);
    buf_init(&j->text_copy, SIZE_MAX / 2);
    int rc = 0;
    if (st) {
        /* Only the header fields are in memory; the body hash came with
         * the body as it was stored. */
        rc = buf_append(&j->text_copy, st->head.ptr, st->head.len);
        j->text = (struct view){j->text_copy.data, j->text_copy.len};
        j->has_bh = true;
        memcpy(j->body_hash, st->body_hash, sizeof(j->body_hash));
    } else {
        j->text = msg->body;
    }
    buf_init(&j->out, (st ? 0 : msg->body.len) + 64 * 1024);
    if (rc == 0)
        j->n_signers = find_signers(keys, j->text, &j->h, j->signers);
    if (rc != 0 || j->n_signers == 0) {
        job_free(j);
        return rc;
    }
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
                 const struct smtpd_message *msg, const struct signing_streamed *st,
                 mta_enqueue_fn enqueue)
{
    struct sign_job *j;
    int rc = sign_prepare(m, keys, s, msg, st, &j);
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
