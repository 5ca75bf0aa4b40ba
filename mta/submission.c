/*
 * submission.c - the SMTP listeners that accept mail into the queue: maps
 * the smtpd_* parameters of struct conf to the smtp module's server options
 * and hands every finished message to queue_submit(). Each smtpd_listen
 * entry has a role (smtp, submission RFC 6409, submissions RFC 8314); a
 * reload opens new addresses, closes removed ones (their sessions finish)
 * and keeps the rest, all or nothing.
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
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "dkim.h"
#include "mta.h"
#include "queue.h"
#include "smtp.h"

/* One listening socket: its address text ("127.0.0.1:25", "[::]:587") and
 * role. "*:25" stands for two sockets. */
struct sock {
    char key[80];
    enum smtpd_role role;
    char spec[300]; /* the smtpd_listen entry it came from, for errors */
    struct sockaddr_storage sa;
    struct smtpd_listener *l; /* NULL until bound */
};

struct submission {
    struct smtpd *srv;
    struct sock *socks;
    size_t n_socks;
    struct conf_map *logins;    /* smtpd_sender_login_maps, or NULL */
    struct dkim_keytable *dkim; /* NULL: no signing */
};

struct dkim_keytable *submission_dkim(struct mta *m)
{
    return m->submission ? m->submission->dkim : NULL;
}

/* Does the header section carry "TLS-Required: No" (RFC 8689 5: the field
 * name and the value case-insensitive, whitespace and folding around the
 * value allowed)? Only the header section is looked at. */
static bool tls_required_no(const char *msg, size_t len)
{
    size_t i = 0;
    while (i < len) {
        const char *line = msg + i;
        const char *nl = memchr(line, '\n', len - i);
        size_t ll = nl ? (size_t)(nl - line) : len - i;
        size_t next = nl ? i + ll + 1 : len;
        if (ll == 0 || (ll == 1 && line[0] == '\r'))
            return false; /* the end of the header section */
        if (ll >= 13 && strncasecmp(line, "TLS-Required:", 13) == 0) {
            /* The value, unfolded: the rest of this line and any
             * continuation lines. */
            char v[64];
            size_t vn = 0;
            size_t p = i + 13;
            while (p < len) {
                char ch = msg[p];
                if (ch == '\n') {
                    if (p + 1 < len && (msg[p + 1] == ' ' || msg[p + 1] == '\t')) {
                        p++;
                        continue;
                    }
                    break;
                }
                if (ch != ' ' && ch != '\t' && ch != '\r') {
                    if (vn + 1 >= sizeof(v))
                        return false;
                    v[vn++] = ch;
                }
                p++;
            }
            v[vn] = '\0';
            return strcasecmp(v, "no") == 0;
        }
        i = next;
    }
    return false;
}

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

/* A reload's new listener set, bound before anything else changes, and its
 * new DKIM key table. */
struct submission_update {
    struct smtpd_opts o;
    char host[256];
    struct sock *socks; /* the new set: kept ones have l of the old set */
    size_t n_socks;
    struct dkim_keytable *dkim;
    struct conf_map *logins;
};

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

/* The queue's envelope and recipients of msg (rcpts: free() it). head is
 * the message's header section, or more (TLS-Required: is looked for). */
static int make_envelope(const struct smtpd_message *msg, const char *head, size_t len,
                         struct queue_envelope *env, struct queue_rcpt_in **rcpts)
{
    struct queue_rcpt_in *rc = calloc(msg->n_rcpts, sizeof(*rc));
    if (!rc)
        return ERR_NOMEM;
    for (size_t i = 0; i < msg->n_rcpts; i++) {
        rc[i].addr = msg->rcpts[i].addr;
        rc[i].orcpt = msg->rcpts[i].orcpt[0] ? msg->rcpts[i].orcpt : NULL;
        /* SMTPD_NOTIFY_* and QUEUE_NOTIFY_* are both the RFC 3461 bits. */
        rc[i].notify = msg->rcpts[i].notify;
    }
    *env = (struct queue_envelope){
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
                 (msg->eightbitmime ? QUEUE_F_8BITMIME : 0u) | (msg->tls[0] ? QUEUE_F_TLS : 0u) |
                 (tls_required_no(head, len) ? QUEUE_F_TLS_OPTIONAL : 0u),
    };
    *rcpts = rc;
    return 0;
}

static int submit(struct mta *m, struct smtpd_session *s, const struct smtpd_message *msg,
                  const char *body, size_t len, void (*cb)(void *, int, const char *), void *arg)
{
    (void)s;
    if (!m->queue)
        return ERR_CLOSED;
    struct queue_envelope env;
    struct queue_rcpt_in *rc;
    int err = make_envelope(msg, body, len, &env, &rc);
    if (err)
        return err;
    /* Envelope and recipients are copied before queue_submit() returns; the
     * body must stay until the callback. */
    err = queue_submit(m->queue, &env, rc, msg->n_rcpts, body, len, cb, arg);
    free(rc);
    return err;
}

/* ---- streaming large messages into the queue ------------------------------ */

/* A message longer than this is stored as it arrives (queue_stage_*), so
 * memory never grows with message size. */
#define STREAM_THRESHOLD (2 * QUEUE_CHUNK)
/* Reading stops while more than this much of a session's message waits
 * for the queue's writer, and goes on below half of it. */
#define STREAM_BACKLOG (2 * QUEUE_CHUNK)

/* One message being streamed: smtpd_session_data() of its session from
 * SMTPD_STREAM_START until the commit or the abort. */
struct inflow {
    struct mta *m;
    struct smtpd_session *s;
    struct queue_stage *st;
    struct dkim_keytable *keys; /* when it is to be signed: the table at START */
    struct dkim_bh *bh;         /* and its body hash, as the body goes by */
    struct buf head;            /* the client's header section */
    uint64_t fed;               /* octets of the message taken */
    bool paused;
};

static void inflow_free(struct inflow *f)
{
    smtpd_session_set_data(f->s, NULL);
    queue_stage_abort(f->st); /* nothing after a commit */
    dkim_bh_free(f->bh);
    dkim_keytable_free(f->keys);
    buf_free(&f->head);
    free(f);
}

/* The writer committed a chunk: read on once the backlog is small. */
static void inflow_progress(void *arg)
{
    struct inflow *f = arg;
    if (f->paused && queue_stage_backlog(f->st) <= STREAM_BACKLOG / 2) {
        f->paused = false;
        smtpd_session_resume(f->s);
    }
}

static int inflow_feed(struct inflow *f, const char *p, size_t n)
{
    int rc = queue_stage_append(f->st, p, n);
    if (rc == 0 && f->bh) {
        /* The body hash skips the header section (RFC 6376 3.7). */
        size_t skip = f->fed < f->head.len ? f->head.len - (size_t)f->fed : 0;
        if (skip < n)
            rc = dkim_bh_feed(f->bh, p + skip, n - skip);
    }
    f->fed += n;
    return rc;
}

static int inflow_start(struct mta *m, struct smtpd_session *s, struct view head)
{
    if (!m->queue)
        return ERR_CLOSED;
    struct inflow *f = calloc(1, sizeof(*f));
    if (!f)
        return ERR_NOMEM;
    f->m = m;
    f->s = s;
    buf_init(&f->head, SIZE_MAX / 2);
    int rc = queue_stage_open(m->queue, inflow_progress, f, &f->st);
    if (rc == 0)
        rc = buf_append(&f->head, head.ptr, head.len);
    struct dkim_keytable *keys = m->submission ? m->submission->dkim : NULL;
    if (rc == 0 && signing_wanted(keys, head.ptr, head.len)) {
        f->keys = dkim_keytable_ref(keys);
        f->bh = dkim_bh_new(DKIM_CANON_RELAXED, -1);
        if (!f->bh)
            rc = ERR_NOMEM;
    }
    smtpd_session_set_data(s, f);
    if (rc)
        inflow_free(f);
    return rc;
}

static int on_stream(void *arg, struct smtpd_session *s, enum smtpd_stream_ev ev, struct view bytes)
{
    struct inflow *f = smtpd_session_data(s);
    if (ev == SMTPD_STREAM_START)
        return inflow_start(arg, s, bytes);
    if (!f)
        return ERR_CLOSED;
    if (ev == SMTPD_STREAM_ABORT) {
        inflow_free(f);
        return 0;
    }
    int rc = inflow_feed(f, bytes.ptr, bytes.len);
    if (rc)
        return rc;
    if (queue_stage_backlog(f->st) > STREAM_BACKLOG) {
        f->paused = true;
        return SMTPD_STREAM_PAUSE;
    }
    return 0;
}

/* Commit a streamed message: body is what goes in front of the server's
 * fields (the DKIM signatures, or nothing); NULL cb: it will not be
 * queued (signing failed). */
static int inflow_commit(struct mta *m, struct smtpd_session *s, const struct smtpd_message *msg,
                         const char *body, size_t len, void (*cb)(void *, int, const char *),
                         void *arg)
{
    (void)m;
    struct inflow *f = smtpd_session_data(s);
    if (!f)
        return ERR_CLOSED;
    struct buf prefix;
    buf_init(&prefix, QUEUE_CHUNK);
    struct queue_envelope env;
    struct queue_rcpt_in *rc = NULL;
    int err = cb ? 0 : ERR_CLOSED;
    if (!err)
        err = buf_append(&prefix, body, len);
    if (!err)
        err = buf_append(&prefix, msg->body.ptr, msg->prefix_len);
    if (!err)
        err = make_envelope(msg, f->head.data, f->head.len, &env, &rc);
    if (!err) {
        err = queue_stage_commit(f->st, &env, rc, msg->n_rcpts, prefix.data, prefix.len, cb, arg);
        f->st = NULL; /* consumed */
    }
    free(rc);
    buf_free(&prefix);
    inflow_free(f);
    return err;
}

/* The end of a streamed message: the rest of it, the body hash, then
 * signing (maybe) and the commit. */
static int inflow_finish(struct mta *m, struct smtpd_session *s, const struct smtpd_message *msg)
{
    struct inflow *f = smtpd_session_data(s);
    if (!f)
        return ERR_CLOSED;
    int rc = inflow_feed(f, msg->body.ptr + msg->prefix_len, msg->body.len - msg->prefix_len);
    if (rc == 0 && f->bh) {
        uint8_t bh[32];
        struct buf head;
        buf_init(&head, SIZE_MAX / 2);
        rc = dkim_bh_final(f->bh, bh, NULL);
        if (rc == 0)
            rc = buf_append(&head, msg->body.ptr, msg->prefix_len);
        if (rc == 0)
            rc = buf_append(&head, f->head.data, f->head.len);
        struct signing_streamed st = {{head.data, head.len}, bh};
        if (rc == 0)
            rc = signing_take(m, f->keys, s, msg, &st, inflow_commit);
        buf_free(&head);
        if (rc > 0)
            return 0; /* signing_take() answers the session */
    }
    if (rc == 0)
        rc = inflow_commit(m, s, msg, "", 0, submitted, s);
    else
        inflow_free(f);
    return rc;
}

static void on_message(void *arg, struct smtpd_session *s, const struct smtpd_message *msg)
{
    struct mta *m = arg;
    int rc;
    if (!m->queue) {
        rc = ERR_CLOSED;
    } else if (msg->streamed) {
        rc = inflow_finish(m, s, msg);
    } else {
        rc = signing_take(m, m->submission ? m->submission->dkim : NULL, s, msg, NULL, submit);
        if (rc > 0)
            return;
        if (rc == 0)
            rc = submit(m, s, msg, msg->body.ptr, msg->body.len, submitted, s);
    }
    if (rc != 0) {
        struct inflow *f = smtpd_session_data(s);
        if (f)
            inflow_free(f);
        smtpd_session_done(s, rc, NULL);
    }
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
    o->on_stream = on_stream;
    o->stream_threshold = STREAM_THRESHOLD;
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

static enum smtpd_role role_of(enum conf_listen_role r)
{
    return r == CONF_LISTEN_SUBMISSIONS  ? SMTPD_ROLE_SUBMISSIONS
           : r == CONF_LISTEN_SUBMISSION ? SMTPD_ROLE_SUBMISSION
                                         : SMTPD_ROLE_SMTP;
}

static int sock_add(struct sock **v, size_t *n, const struct sockaddr *sa, enum smtpd_role role,
                    const char *spec, struct buf *err)
{
    char key[80];
    sockaddr_text(sa, key, sizeof(key));
    for (size_t i = 0; i < *n; i++) {
        if (strcmp((*v)[i].key, key) == 0) {
            buf_printf(err, "smtpd_listen: \"%s\": %s is listed twice\n", spec, key);
            return ERR_INVAL;
        }
    }
    struct sock *nv = realloc(*v, (*n + 1) * sizeof(*nv));
    if (!nv)
        return ERR_NOMEM;
    *v = nv;
    struct sock *k = &nv[(*n)++];
    memset(k, 0, sizeof(*k));
    str_copy(k->key, key, sizeof(k->key));
    str_copy(k->spec, spec, sizeof(k->spec));
    k->role = role;
    memcpy(&k->sa, sa,
           sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
    return 0;
}

/* The sockets smtpd_listen of c asks for, checked against what each role
 * needs (a submission port without a certificate or without credentials
 * could take no mail at all: a configuration error naming the entry). */
static int plan(const struct conf *c, struct sock **out, size_t *n_out, struct buf *err)
{
    *out = NULL;
    *n_out = 0;
    struct sock *v = NULL;
    size_t n = 0;
    int rc = 0;
    const struct conf_list *l = &c->smtpd_listen;
    for (size_t i = 0; i < l->n && rc == 0; i++) {
        const char *spec = l->v[i];
        struct conf_hostport hp;
        enum conf_listen_role cr;
        if (conf_parse_listen(spec, &hp, &cr) != 0) {
            buf_printf(err, "smtpd_listen: bad address \"%s\"\n", spec);
            rc = ERR_INVAL;
            break;
        }
        /* settings_conf_check() made sure a submission role has its
         * certificate and credentials. */
        enum smtpd_role role = role_of(cr);
        if (strcmp(hp.host, "*") == 0) {
            struct sockaddr_in a4;
            struct sockaddr_in6 a6;
            uv_ip4_addr("0.0.0.0", hp.port, &a4);
            uv_ip6_addr("::", hp.port, &a6);
            rc = sock_add(&v, &n, (struct sockaddr *)&a4, role, spec, err);
            if (rc == 0)
                rc = sock_add(&v, &n, (struct sockaddr *)&a6, role, spec, err);
            continue;
        }
        struct sockaddr_storage ss;
        memset(&ss, 0, sizeof(ss));
        if (uv_ip4_addr(hp.host, hp.port, (struct sockaddr_in *)&ss) != 0 &&
            uv_ip6_addr(hp.host, hp.port, (struct sockaddr_in6 *)&ss) != 0) {
            buf_printf(err, "smtpd_listen: \"%s\" is not an IP address\n", spec);
            rc = ERR_INVAL;
            break;
        }
        rc = sock_add(&v, &n, (struct sockaddr *)&ss, role, spec, err);
    }
    if (rc != 0) {
        free(v);
        return rc;
    }
    *out = v;
    *n_out = n;
    return 0;
}

static struct sock *find_sock(struct sock *v, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].key, key) == 0)
            return &v[i];
    return NULL;
}

/* Free a submission (its server frees itself as its handles close;
 * signing jobs in flight hold their own references to the key table). */
static void sub_free(struct submission *sub)
{
    smtpd_free(sub->srv);
    conf_map_free(sub->logins);
    free(sub->socks);
    dkim_keytable_free(sub->dkim);
    free(sub);
}

int submission_start(struct mta *m, struct buf *err)
{
    struct submission *sub = calloc(1, sizeof(*sub));
    if (!sub)
        return ERR_NOMEM;
    struct smtpd_opts o;
    char host[256];
    int rc = plan(m->conf, &sub->socks, &sub->n_socks, err);
    if (rc == 0)
        rc = signing_load(m->conf, &sub->dkim, err);
    if (rc == 0)
        rc = load_logins(m->conf, &sub->logins, err);
    if (rc == 0)
        rc = make_opts(m, m->conf, &o, host, sizeof(host), err);
    if (rc == 0) {
        sub->srv = smtpd_new(m->loop, &o, err);
        drop_opts(&o);
        if (!sub->srv)
            rc = ERR_INVAL;
    }
    for (size_t i = 0; rc == 0 && i < sub->n_socks; i++) {
        struct sock *k = &sub->socks[i];
        rc = smtpd_listen_role(sub->srv, (struct sockaddr *)&k->sa, k->role, &k->l, err);
    }
    if (rc) {
        sub_free(sub);
        return rc;
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
     * queue_close()). */
    sub_free(sub);
    m->submission = NULL;
}

void submission_reload_cancel(struct mta *m, struct submission_update *u)
{
    if (!u)
        return;
    struct submission *sub = m->submission;
    /* Listeners opened for this update only are closed again. */
    for (size_t i = 0; i < u->n_socks; i++) {
        struct sock *k = &u->socks[i];
        if (k->l && !(sub && find_sock(sub->socks, sub->n_socks, k->key)))
            smtpd_listener_close(k->l);
    }
    drop_opts(&u->o);
    dkim_keytable_free(u->dkim);
    conf_map_free(u->logins);
    free(u->socks);
    free(u);
}

int submission_reload_prepare(struct mta *m, struct conf *c, struct submission_update **out,
                              struct buf *err)
{
    *out = NULL;
    struct submission *sub = m->submission;
    if (!sub)
        return 0;
    struct submission_update *u = calloc(1, sizeof(*u));
    if (!u)
        return ERR_NOMEM;
    /* The DKIM key table is loaded before anything changes, and swapped
     * only when the rest of the reload has succeeded. */
    int rc = plan(c, &u->socks, &u->n_socks, err);
    if (rc == 0)
        rc = signing_load(c, &u->dkim, err);
    if (rc == 0)
        rc = load_logins(c, &u->logins, err);
    if (rc == 0)
        rc = make_opts(m, c, &u->o, u->host, sizeof(u->host), err);
    if (rc) {
        submission_reload_cancel(m, u); /* nothing is bound yet */
        return rc;
    }
    u->o.hostname = u->host;
    /* The options are checked by building a server from them (no listener,
     * no session: it is freed at once). */
    struct smtpd *check = smtpd_new(m->loop, &u->o, err);
    if (!check) {
        submission_reload_cancel(m, u);
        return ERR_INVAL;
    }
    smtpd_free(check);
    /* Open the new addresses now: one that cannot be bound refuses the
     * whole reload, and nothing has changed yet. Kept addresses keep their
     * socket (and their connections). */
    for (size_t i = 0; i < u->n_socks; i++) {
        struct sock *k = &u->socks[i];
        struct sock *old = find_sock(sub->socks, sub->n_socks, k->key);
        if (old) {
            k->l = old->l;
            continue;
        }
        rc = smtpd_listen_role(sub->srv, (struct sockaddr *)&k->sa, k->role, &k->l, err);
        if (rc) {
            submission_reload_cancel(m, u);
            return rc;
        }
    }
    *out = u;
    return 0;
}

void submission_reload_apply(struct mta *m, struct submission_update *u)
{
    struct submission *sub = m->submission;
    if (!u)
        return;
    if (!sub) {
        submission_reload_cancel(m, u);
        return;
    }
    struct buf err;
    buf_init(&err, 4096);
    if (smtpd_set_opts(sub->srv, &u->o, &err) != 0)
        log_err("smtpd", "reload: %s", err.data ? err.data : "cannot apply the options");
    buf_free(&err);
    /* Removed addresses: stop accepting; their sessions finish. */
    for (size_t i = 0; i < sub->n_socks; i++)
        if (!find_sock(u->socks, u->n_socks, sub->socks[i].key))
            smtpd_listener_close(sub->socks[i].l);
    for (size_t i = 0; i < u->n_socks; i++)
        smtpd_listener_set_role(u->socks[i].l, u->socks[i].role);
    free(sub->socks);
    sub->socks = u->socks;
    sub->n_socks = u->n_socks;
    u->socks = NULL;
    u->n_socks = 0;
    conf_map_free(sub->logins);
    sub->logins = u->logins;
    u->logins = NULL;
    dkim_keytable_free(sub->dkim);
    sub->dkim = u->dkim;
    if (sub->dkim)
        log_info("smtpd", "DKIM: %zu signing keys (reloaded)", dkim_keytable_count(sub->dkim));
    drop_opts(&u->o);
    free(u);
}
