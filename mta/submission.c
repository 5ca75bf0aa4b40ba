/*
 * submission.c - the SMTP listeners that accept mail into the queue: maps
 * the smtpd_* parameters of struct conf to the smtp module's server options
 * and hands every finished message to queue_submit().
 *
 * Invariants (DESIGN.md, "the path of one message"):
 *  - The client's 250 is sent only from the queue's submit callback, which
 *    runs after the transaction holding the message is synced to disk.
 *  - The message body stays owned by the SMTP session until that callback
 *    (smtpd_session_done() releases it), as queue_submit() requires.
 *  - Relay is allowed from mynetworks (of the configuration in force when
 *    the recipient is checked) or after AUTH; the smtp module decides the
 *    rest.
 *  - DKIM (dkim_key_table): a message whose From domain has keys is signed
 *    here, after the smtp module has added Received:, Date: and Message-ID:
 *    and before it is queued, so the queued copy is the signed one. RSA
 *    signatures are made on the thread pool (about a millisecond each)
 *    while the session waits for its answer; Ed25519 ones inline.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dkim.h"
#include "mta.h"
#include "policy.h"
#include "queue.h"
#include "smtp.h"

struct submission {
    struct smtpd *srv;
    struct dkim_keytable *dkim; /* NULL: no signing */
};

/* Most signatures on one message (lines of the key table for one domain). */
#define MAX_SIGNERS 8

static bool relay_allowed(void *arg, const struct sockaddr *client)
{
    struct mta *m = arg;
    return conf_mynetworks_match(m->conf, client);
}

static void submitted(void *arg, int status, const char *id)
{
    smtpd_session_done(arg, status, id);
}

static int submit(struct mta *m, const struct smtpd_message *msg, const char *body, size_t len,
                  void (*cb)(void *, int, const char *), void *arg)
{
    if (!m->queue)
        return ERR_CLOSED;
    struct queue_rcpt_in *rc = calloc(msg->n_rcpts, sizeof(*rc));
    if (!rc)
        return ERR_NOMEM;
    for (size_t i = 0; i < msg->n_rcpts; i++) {
        rc[i].addr = msg->rcpts[i].addr;
        rc[i].orcpt = msg->rcpts[i].orcpt[0] ? msg->rcpts[i].orcpt : NULL;
        /* SMTPD_NOTIFY_* and QUEUE_NOTIFY_* are both the RFC 3461 bits. */
        rc[i].notify = msg->rcpts[i].notify;
    }
    struct queue_envelope env = {
        .sender = msg->sender,
        .client_name = msg->client_name,
        .client_addr = msg->client_addr,
        .helo = msg->helo,
        .auth_user = msg->auth_user,
        .tls = msg->tls,
        .envid = msg->envid,
        .ret = msg->ret == SMTPD_RET_FULL   ? QUEUE_RET_FULL
               : msg->ret == SMTPD_RET_HDRS ? QUEUE_RET_HDRS
                                            : QUEUE_RET_NONE,
        .flags = (msg->smtputf8 ? QUEUE_F_SMTPUTF8 : 0u) |
                 (msg->eightbitmime ? QUEUE_F_8BITMIME : 0u) | (msg->tls[0] ? QUEUE_F_TLS : 0u),
    };
    /* Envelope and recipients are copied before queue_submit() returns; the
     * body must stay until the callback. */
    int rc_submit = queue_submit(m->queue, &env, rc, msg->n_rcpts, body, len, cb, arg);
    free(rc);
    return rc_submit;
}

/* ---- DKIM signing ------------------------------------------------------------ */

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
    int rc = submit(j->m, &j->msg, j->out.data, j->out.len, job_submitted, j);
    if (rc != 0) {
        smtpd_session_done(j->s, rc, NULL);
        job_free(j);
    }
}

/* Find the keys for the message's From domain. 0 with *job NULL when the
 * message is not to be signed. */
static int sign_prepare(struct mta *m, struct smtpd_session *s, const struct smtpd_message *msg,
                        struct sign_job **job)
{
    *job = NULL;
    struct dkim_keytable *keys = m->submission ? m->submission->dkim : NULL;
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

static void on_message(void *arg, struct smtpd_session *s, const struct smtpd_message *msg)
{
    struct mta *m = arg;
    if (!m->queue) {
        smtpd_session_done(s, ERR_CLOSED, NULL);
        return;
    }
    struct sign_job *j;
    int rc = sign_prepare(m, s, msg, &j);
    if (rc == 0 && j) {
        bool rsa = false;
        for (size_t i = 0; i < j->n_signers; i++)
            rsa |= dkim_key_alg(j->signers[i]->key) == DKIM_RSA_SHA256;
        /* The session waits for smtpd_session_done() meanwhile: the client
         * gets its 250 only after the signed copy is synced. */
        if (rsa && uv_queue_work(m->loop, &j->work, sign_run, sign_done) == 0)
            return;
        sign_run(&j->work);
        sign_done(&j->work, 0);
        return;
    }
    if (rc == 0)
        rc = submit(m, msg, msg->body.ptr, msg->body.len, submitted, s);
    if (rc != 0)
        smtpd_session_done(s, rc, NULL);
}

static uint32_t ms_of(int64_t seconds)
{
    if (seconds <= 0)
        return 0;
    if (seconds > (int64_t)(UINT32_MAX / 1000))
        return UINT32_MAX;
    return (uint32_t)(seconds * 1000);
}

/* Build server options from a snapshot. The TLS context and credentials
 * are new references that the caller drops after handing them over. */
static int make_opts(struct mta *m, const struct conf *c, struct smtpd_opts *o, char *host,
                     size_t host_size, struct buf *err)
{
    memset(o, 0, sizeof(*o));
    if (c->myhostname && *c->myhostname) {
        str_copy(host, c->myhostname, host_size);
    } else if (gethostname(host, host_size) != 0 || !*host) {
        str_copy(host, "localhost", host_size);
    }
    host[host_size - 1] = '\0';
    o->hostname = host;
    o->banner = c->smtpd_banner;
    o->message_size_limit = c->message_size_limit;
    o->recipient_limit = (size_t)c->smtpd_recipient_limit;
    o->hard_error_limit = (unsigned)c->smtpd_hard_error_limit;
    o->session_limit = (size_t)c->smtpd_session_limit;
    o->client_limit = (size_t)c->smtpd_client_connection_count_limit;
    o->timeout_ms = ms_of(c->smtpd_timeout);
    o->data_timeout_ms = ms_of(c->smtpd_data_timeout);
    o->bare_newline = strcmp(c->smtpd_forbid_bare_newline, "normalize") == 0 ? SMTPD_BARE_NORMALIZE
                                                                             : SMTPD_BARE_REJECT;
    o->relay_allowed = relay_allowed;
    o->on_message = on_message;
    o->arg = m;
    if (c->smtpd_tls_cert_file && *c->smtpd_tls_cert_file) {
        const char *key = c->smtpd_tls_key_file && *c->smtpd_tls_key_file ? c->smtpd_tls_key_file
                                                                          : c->smtpd_tls_cert_file;
        char why[512] = "";
        o->tls = tls_ctx_server_new(c->smtpd_tls_cert_file, key, why, sizeof(why));
        if (!o->tls) {
            buf_printf(err, "smtpd_tls_cert_file: %s\n", why[0] ? why : "cannot load");
            return ERR_INVAL;
        }
    }
    if (c->smtpd_auth_file && *c->smtpd_auth_file) {
        o->creds = smtpd_credentials_load(c->smtpd_auth_file, err);
        if (!o->creds) {
            tls_ctx_free(o->tls);
            o->tls = NULL;
            return ERR_INVAL;
        }
        if (!o->tls)
            log_warn("smtpd", "smtpd_auth_file is set but smtpd_tls_cert_file is not: AUTH is "
                              "offered only after STARTTLS, so it is never offered");
    }
    return 0;
}

/* The key table of a snapshot: *out NULL when dkim_key_table is empty. */
static int load_dkim(const struct conf *c, struct dkim_keytable **out, struct buf *err)
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

static void drop_opts(struct smtpd_opts *o)
{
    tls_ctx_free(o->tls);
    smtpd_credentials_free(o->creds);
}

static int listen_one(struct smtpd *srv, const char *spec, struct buf *err)
{
    struct conf_hostport hp;
    if (conf_parse_hostport(spec, false, &hp) != 0) {
        buf_printf(err, "smtpd_listen: bad address \"%s\"\n", spec);
        return ERR_INVAL;
    }
    if (strcmp(hp.host, "*") == 0) {
        struct sockaddr_in a4;
        struct sockaddr_in6 a6;
        uv_ip4_addr("0.0.0.0", hp.port, &a4);
        uv_ip6_addr("::", hp.port, &a6);
        int rc = smtpd_listen(srv, (struct sockaddr *)&a4, err);
        if (rc == 0)
            rc = smtpd_listen(srv, (struct sockaddr *)&a6, err);
        return rc;
    }
    struct sockaddr_storage ss;
    if (uv_ip4_addr(hp.host, hp.port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(hp.host, hp.port, (struct sockaddr_in6 *)&ss) != 0) {
        buf_printf(err, "smtpd_listen: \"%s\" is not an IP address\n", spec);
        return ERR_INVAL;
    }
    return smtpd_listen(srv, (struct sockaddr *)&ss, err);
}

int submission_start(struct mta *m, struct buf *err)
{
    struct smtpd_opts o;
    char host[256];
    int rc = make_opts(m, m->conf, &o, host, sizeof(host), err);
    if (rc)
        return rc;
    struct dkim_keytable *keys;
    rc = load_dkim(m->conf, &keys, err);
    if (rc) {
        drop_opts(&o);
        return rc;
    }
    struct submission *sub = calloc(1, sizeof(*sub));
    if (!sub) {
        drop_opts(&o);
        dkim_keytable_free(keys);
        return ERR_NOMEM;
    }
    sub->dkim = keys;
    sub->srv = smtpd_new(m->loop, &o, err);
    drop_opts(&o);
    if (!sub->srv) {
        dkim_keytable_free(sub->dkim);
        free(sub);
        return ERR_INVAL;
    }
    const struct conf_list *l = &m->conf->smtpd_listen;
    for (size_t i = 0; i < l->n; i++) {
        rc = listen_one(sub->srv, l->v[i], err);
        if (rc) {
            smtpd_free(sub->srv);
            dkim_keytable_free(sub->dkim);
            free(sub);
            return rc;
        }
    }
    m->submission = sub;
    if (sub->dkim)
        log_info("smtpd", "DKIM: %zu signing keys from %s", dkim_keytable_count(sub->dkim),
                 m->conf->dkim_key_table);
    return 0;
}

void submission_stop(struct mta *m)
{
    if (m->submission)
        smtpd_stop_listening(m->submission->srv);
}

size_t submission_active(const struct mta *m)
{
    return m->submission ? smtpd_active(m->submission->srv) : 0;
}

void submission_close(struct mta *m)
{
    struct submission *sub = m->submission;
    if (!sub)
        return;
    /* Sessions still with the queue get their answer (at the latest inside
     * queue_close()), then the server frees itself as its handles close. */
    smtpd_free(sub->srv);
    /* Signing jobs in flight hold their own references. */
    dkim_keytable_free(sub->dkim);
    free(sub);
    m->submission = NULL;
}

int submission_reload(struct mta *m, struct conf *c, struct buf *err)
{
    if (!m->submission)
        return 0;
    struct smtpd_opts o;
    char host[256];
    /* The key table is loaded before anything changes, and swapped only
     * when the rest of the reload has succeeded: all or nothing. */
    struct dkim_keytable *keys;
    int rc = load_dkim(c, &keys, err);
    if (rc)
        return rc;
    rc = make_opts(m, c, &o, host, sizeof(host), err);
    if (rc) {
        dkim_keytable_free(keys);
        return rc;
    }
    rc = smtpd_set_opts(m->submission->srv, &o, err);
    drop_opts(&o);
    if (rc) {
        dkim_keytable_free(keys);
        return rc;
    }
    dkim_keytable_free(m->submission->dkim);
    m->submission->dkim = keys;
    if (keys)
        log_info("smtpd", "DKIM: %zu signing keys from %s", dkim_keytable_count(keys),
                 c->dkim_key_table);
    /* smtpd_listen changes need a restart, as in Postfix's master.cf. */
    return rc;
}
