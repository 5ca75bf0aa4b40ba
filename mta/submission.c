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
 *  - DKIM (dkim_key_table): a message whose From domain has keys is handed
 *    to signing.c, which queues the signed copy with submit() and answers
 *    the session itself.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dkim.h"
#include "mta.h"
#include "queue.h"
#include "smtp.h"

struct submission {
    struct smtpd *srv;
    struct conf_map *logins;    /* smtpd_sender_login_maps, or NULL */
    struct dkim_keytable *dkim; /* NULL: no signing */
};

/* smtpd_sender_login_maps: which senders an authenticated login may use
 * (conf_sender_login_ok(); no table: any). The table in force is the one
 * of the last successful start or reload. */
static bool sender_allowed(void *arg, const char *login, const char *sender)
{
    struct mta *m = arg;
    return conf_sender_login_ok(m->submission ? m->submission->logins : NULL, sender, login);
}

/* Load the snapshot's smtpd_sender_login_maps (NULL when not set). A bad
 * line is FILE:LINE: why in err. */
static int load_logins(const struct conf *c, struct conf_map **out, struct buf *err)
{
    *out = NULL;
    if (!c->smtpd_sender_login_maps || !c->smtpd_sender_login_maps[0])
        return 0;
    *out = conf_sender_logins_load(c->smtpd_sender_login_maps, err);
    return *out ? 0 : ERR_INVAL;
}

static bool relay_allowed(void *arg, const struct sockaddr *client)
{
    struct mta *m = arg;
    return conf_mynetworks_match(m->conf, client);
}

static void submitted(void *arg, int status, const char *id)
{
    /* Refusals are counted where the reply is sent (smtp/server.c). */
    if (status == 0)
        metric_add(MET_MSG_ACCEPTED, NULL, NULL, 1);
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

static void on_message(void *arg, struct smtpd_session *s, const struct smtpd_message *msg)
{
    struct mta *m = arg;
    if (!m->queue) {
        smtpd_session_done(s, ERR_CLOSED, NULL);
        return;
    }
    int rc = signing_take(m, m->submission ? m->submission->dkim : NULL, s, msg, submit);
    if (rc > 0)
        return;
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
    o->reject_long_lines = c->smtpd_reject_long_lines;
    o->hopcount_limit = (unsigned)c->hopcount_limit;
    o->postmaster = c->postmaster_address;
    o->bare_newline = strcmp(c->smtpd_forbid_bare_newline, "normalize") == 0 ? SMTPD_BARE_NORMALIZE
                                                                             : SMTPD_BARE_REJECT;
    o->relay_allowed = relay_allowed;
    o->sender_allowed = sender_allowed;
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
    rc = signing_load(m->conf, &keys, err);
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
    rc = load_logins(m->conf, &sub->logins, err);
    if (rc) {
        drop_opts(&o);
        dkim_keytable_free(sub->dkim);
        free(sub);
        return rc;
    }
    sub->srv = smtpd_new(m->loop, &o, err);
    drop_opts(&o);
    if (!sub->srv) {
        conf_map_free(sub->logins);
        dkim_keytable_free(sub->dkim);
        free(sub);
        return ERR_INVAL;
    }
    const struct conf_list *l = &m->conf->smtpd_listen;
    for (size_t i = 0; i < l->n; i++) {
        rc = listen_one(sub->srv, l->v[i], err);
        if (rc) {
            smtpd_free(sub->srv);
            conf_map_free(sub->logins);
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
    conf_map_free(sub->logins);
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
    /* The key table and the sender login map are loaded before anything
     * changes, and swapped only when the rest of the reload has succeeded:
     * all or nothing. */
    struct dkim_keytable *keys;
    int rc = signing_load(c, &keys, err);
    if (rc)
        return rc;
    struct conf_map *logins = NULL;
    rc = load_logins(c, &logins, err);
    if (rc) {
        dkim_keytable_free(keys);
        return rc;
    }
    rc = make_opts(m, c, &o, host, sizeof(host), err);
    if (rc) {
        conf_map_free(logins);
        dkim_keytable_free(keys);
        return rc;
    }
    rc = smtpd_set_opts(m->submission->srv, &o, err);
    drop_opts(&o);
    if (rc) {
        conf_map_free(logins);
        dkim_keytable_free(keys);
        return rc;
    }
    conf_map_free(m->submission->logins);
    m->submission->logins = logins;
    dkim_keytable_free(m->submission->dkim);
    m->submission->dkim = keys;
    if (keys)
        log_info("smtpd", "DKIM: %zu signing keys from %s", dkim_keytable_count(keys),
                 c->dkim_key_table);
    /* smtpd_listen changes need a restart, as in Postfix's master.cf. */
    return rc;
}
