/*
 * server.c - SMTP server sessions (submission): listeners, the session
 * state machine, replies, STARTTLS and AUTH. DATA, BDAT and the handoff of
 * a finished message to the owner are in server_body.c.
 *
 * Standards: RFC 5321 (3.3 mail transactions, 4.1 commands, 4.2 replies,
 * 4.3.2 command-reply sequences, 4.5.3 limits and timeouts); RFC 2920
 * (PIPELINING: replies are sent when the input runs dry); RFC 1870 (SIZE);
 * RFC 6152 (8BITMIME); RFC 2034 / 3463 (enhanced status codes); RFC 6531
 * (SMTPUTF8); RFC 3461 (DSN); RFC 3207 (STARTTLS); RFC 4954, 4616 (AUTH
 * PLAIN, LOGIN); RFC 3030 (CHUNKING); RFC 5322 3.6 (Date:, Message-ID:);
 * RFC 6409 4.3 (submission: AUTH before MAIL from every client) and RFC 8314
 * 3.3 (submissions: TLS from the first byte, greeting after the handshake)
 * as listener roles.
 *
 * Shape (see STYLE.md): tls_stream (TCP, TLS after STARTTLS) -> input
 * buffer -> line reader or DATA/BDAT reader -> command handlers -> the
 * owner's on_message callback -> smtpd_session_done() -> the reply.
 *
 * Invariants:
 *  - One state enum with a name table; smtpd_set_state() is the only writer and
 *    re-arms the session's single timer with that state's timeout.
 *  - A session is freed only in its handles' close callbacks, and only when
 *    nothing else (the owner, a password check) still holds it.
 *  - Memory per session is bounded: the input buffer (IN_MAX), unsent
 *    output (reading stops past WRITE_HIGH), one command line, and the
 *    message (message_size_limit plus HDR_RESERVE; with on_stream, about
 *    stream_threshold plus one read: see server_body.c).
 *  - After STARTTLS every plaintext byte that followed the command is
 *    discarded, and HELO/EHLO, AUTH and transaction state are forgotten
 *    (CVE-2011-0411).
 *  - The client is told 250 for a message only after the owner has said the
 *    message is safely stored.
 */
#include "server_int.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define IN_MAX (4 * READ_CHUNK)
#define WRITE_HIGH (256 * 1024)
#define OUT_MAX (1024 * 1024)
#define CLOSE_TIMEOUT_MS 10000

#define DEF_RECIPIENT_LIMIT 1000
#define DEF_ERROR_LIMIT 20
#define DEF_SESSION_LIMIT 100
#define DEF_CLIENT_LIMIT 50
#define DEF_TIMEOUT_MS 300000
#define DEF_DATA_TIMEOUT_MS 600000
#define DEF_HOPCOUNT_LIMIT 50

/* ---- configuration snapshots ------------------------------------------- */

static void cfg_unref(struct smtpd_cfg *c)
{
    if (!c || --c->refs > 0)
        return;
    tls_ctx_free(c->o.tls);
    smtpd_credentials_free(c->o.creds);
    free(c->hostname);
    free(c->banner);
    free(c->postmaster);
    free(c);
}

/* Where RCPT TO:<postmaster> goes (RFC 5321 4.5.1): the owner's address, or
 * "postmaster@" + the host name's domain, as Postfix's $mydomain: the host
 * name minus its first label, unless that would leave a single label (a
 * host name "example.com" is taken as the domain itself). */
static int make_postmaster(struct smtpd_cfg *c, struct buf *err)
{
    const char *pm = c->o.postmaster;
    char tmp[SMTP_PATH_MAX + 1];
    if (!pm || !*pm) {
        const char *h = c->hostname;
        const char *dot = strchr(h, '.');
        const char *dom = dot && strchr(dot + 1, '.') ? dot + 1 : h;
        snprintf(tmp, sizeof(tmp), "postmaster@%s", dom);
        pm = tmp;
    }
    const char *why = NULL;
    if (strlen(pm) + 2 > SMTP_PATH_MAX || smtp_mailbox_check(pm, strlen(pm), false, &why) != 0) {
        buf_printf(err, "postmaster_address: \"%s\" is not a usable address%s%s\n", pm,
                   why ? ": " : "", why ? why + 6 : "");
        return ERR_INVAL;
    }
    c->postmaster = strdup(pm);
    if (!c->postmaster)
        return ERR_NOMEM;
    c->o.postmaster = c->postmaster;
    return 0;
}

static struct smtpd_cfg *cfg_new(const struct smtpd_opts *o, struct buf *err)
{
    if (!o->hostname || !*o->hostname || !o->on_message || o->message_size_limit == 0) {
        buf_append_str(err, "smtpd: hostname, message_size_limit and on_message are required\n");
        return NULL;
    }
    struct smtpd_cfg *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->refs = 1;
    c->o = *o;
    c->hostname = strdup(o->hostname);
    c->banner = strdup(o->banner && *o->banner ? o->banner : "ESMTP Convoy");
    c->o.tls = o->tls ? tls_ctx_ref(o->tls) : NULL;
    c->o.creds = smtpd_credentials_ref(o->creds);
    if (!c->hostname || !c->banner) {
        cfg_unref(c);
        buf_append_str(err, "smtpd: out of memory\n");
        return NULL;
    }
    c->o.hostname = c->hostname;
    c->o.banner = c->banner;
    if (make_postmaster(c, err) != 0) {
        cfg_unref(c);
        return NULL;
    }
    if (!c->o.hopcount_limit)
        c->o.hopcount_limit = DEF_HOPCOUNT_LIMIT;
    if (!c->o.recipient_limit)
        c->o.recipient_limit = DEF_RECIPIENT_LIMIT;
    if (!c->o.hard_error_limit)
        c->o.hard_error_limit = DEF_ERROR_LIMIT;
    if (!c->o.session_limit)
        c->o.session_limit = DEF_SESSION_LIMIT;
    if (!c->o.client_limit)
        c->o.client_limit = DEF_CLIENT_LIMIT;
    if (!c->o.timeout_ms)
        c->o.timeout_ms = DEF_TIMEOUT_MS;
    if (!c->o.data_timeout_ms)
        c->o.data_timeout_ms = DEF_DATA_TIMEOUT_MS;
    return c;
}

static const char *const sstate_names[SS_COUNT] = {
    "connected", "ready", "mail", "rcpt", "data", "bdat", "auth", "tls", "wait", "closing",
};

/* ---- small helpers ----------------------------------------------------- */

void smtpd_reply(struct smtpd_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A negative reply in a mail transaction (to MAIL, RCPT, DATA, BDAT or the
 * end of the message) counts as a refusal, by the reason class of its
 * enhanced status code ("550 5.7.1 ..." -> policy) and 4xx or 5xx. */
static void count_refusal(const struct smtpd_session *s, const char *line)
{
    enum sstate st = s->state == SS_WAIT || s->state == SS_BDAT ? s->resume : s->state;
    if (s->state != SS_WAIT && st != SS_READY && st != SS_MAIL && st != SS_RCPT && st != SS_DATA &&
        s->state != SS_BDAT)
        return;
    metric_add(MET_MSG_REFUSED, metrics_reason_class(line + 4), line[0] == '4' ? "4xx" : "5xx", 1);
}

void smtpd_reply(struct smtpd_session *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t before = s->out.len;
    int rc = buf_vprintf(&s->out, fmt, ap);
    va_end(ap);
    if (rc == 0)
        rc = buf_append(&s->out, "\r\n", 2);
    if (rc) {
        /* Output cannot grow: the client is not reading. Give up on it. */
        s->out.len = before;
        smtpd_session_close(s, false);
        return;
    }
    char c = s->out.data[before];
    if ((c == '4' || c == '5') && s->out.data[before + 3] == ' ') {
        s->errors++;
        count_refusal(s, s->out.data + before);
    }
}

const char *smtpd_client_name(const struct smtpd_session *s)
{
    (void)s;
    return "unknown"; /* no DNS in this module (DESIGN.md) */
}

static void set_timer(struct smtpd_session *s, uint64_t ms);

static void arm_state_timer(struct smtpd_session *s)
{
    switch (s->state) {
    case SS_DATA:
    case SS_BDAT: {
        int64_t left = s->data_deadline - time_mono_ms();
        if (left < 1)
            left = 1;
        uint64_t ms = s->cfg->o.timeout_ms;
        set_timer(s, (uint64_t)left <= ms ? (uint64_t)left : ms);
        s->timer_is_deadline = (uint64_t)left <= ms;
        break;
    }
    case SS_WAIT:
        uv_timer_stop(&s->timer);
        break;
    case SS_CLOSING:
        set_timer(s, CLOSE_TIMEOUT_MS);
        break;
    default:
        set_timer(s, s->cfg->o.timeout_ms);
        break;
    }
}

void smtpd_set_state(struct smtpd_session *s, enum sstate st)
{
    if (s->state != st)
        log_debug("smtpd", "%s[%s]: state %s -> %s", smtpd_client_name(s), s->addr,
                  sstate_names[s->state], sstate_names[st]);
    s->state = st;
    if (!s->hard_closed)
        arm_state_timer(s);
}

void smtpd_transaction_reset(struct smtpd_session *s)
{
    for (size_t i = 0; i < s->n_rcpts; i++) {
        free((char *)s->rcpts[i].addr);
        if (s->rcpts[i].orcpt[0])
            free((char *)s->rcpts[i].orcpt);
    }
    s->n_rcpts = 0;
    s->rcpt_tried = 0;
    memset(&s->mail, 0, sizeof(s->mail));
    s->bdat_active = false;
    smtpd_body_reset(s);
}

/* The state for "no transaction" in this session. */
enum sstate smtpd_idle_state(const struct smtpd_session *s)
{
    return s->helo_seen ? SS_READY : SS_CONNECTED;
}

/* ---- writing ------------------------------------------------------------ */

/* The stream wrote queued bytes, or failed to. */
static void on_written(void *arg, int status)
{
    struct smtpd_session *s = arg;
    if (s->closing)
        return;
    if (status < 0) {
        log_info("smtpd", "lost connection after %s from %s[%s]", smtp_verb_name(s->last_verb),
                 smtpd_client_name(s), s->addr);
        smtpd_session_close(s, false);
        return;
    }
    /* Input held back while replies piled up can go on now. */
    if (!s->in_process && s->in_off < s->in.len && tls_stream_queued(s->stream) < WRITE_HIGH / 2)
        smtpd_process(s);
    else
        smtpd_update_reading(s);
}

/* Hand the replies gathered so far to the stream, which writes everything
 * queued in this loop iteration at once. */
void smtpd_flush(struct smtpd_session *s)
{
    if (s->out.len == 0 || s->hard_closed)
        return;
    int rc = tls_stream_write(s->stream, s->out.data, s->out.len);
    buf_reset(&s->out);
    if (rc != 0)
        smtpd_session_close(s, false);
}

/* ---- the stream's callbacks ---------------------------------------------- */

static void on_read(void *arg, const void *data, size_t n)
{
    struct smtpd_session *s = arg;
    if (s->closing)
        return;
    if (s->in_off > 0) {
        buf_consume(&s->in, s->in_off);
        s->in_off = 0;
    }
    if (buf_append(&s->in, data, n) != 0) {
        log_warn("smtpd", "%s[%s]: input buffer overflow", smtpd_client_name(s), s->addr);
        smtpd_session_close(s, false);
        return;
    }
    if (s->state == SS_DATA || s->state == SS_BDAT)
        arm_state_timer(s);
    smtpd_process(s);
}

/* The input ended: EOF or a reset, or the TLS session ended. */
static void on_end(void *arg, int status, int uv_status)
{
    struct smtpd_session *s = arg;
    (void)status;
    (void)uv_status;
    if (s->closing)
        return;
    log_info("smtpd", "lost connection after %s from %s[%s]", smtp_verb_name(s->last_verb),
             smtpd_client_name(s), s->addr);
    smtpd_session_close(s, false);
}

static void on_handshake(void *arg, int status, const struct tls_facts *f)
{
    struct smtpd_session *s = arg;
    if (s->closing)
        return;
    if (status != 0) {
        log_info("smtpd", "SSL_accept error from %s[%s]: %s", smtpd_client_name(s), s->addr,
                 f && f->text[0] ? f->text : "handshake failed");
        smtpd_session_close(s, false);
        return;
    }
    s->tls_active = true;
    snprintf(s->tls_desc, sizeof(s->tls_desc), "%s %s", f->version, f->cipher);
    str_copy(s->tls_version, f->version, sizeof(s->tls_version));
    str_copy(s->tls_cipher, f->cipher, sizeof(s->tls_cipher));
    log_info("smtpd", "Anonymous TLS connection established from %s[%s]: %s with cipher %s%s%s",
             smtpd_client_name(s), s->addr, f->version, f->cipher,
             f->group[0] ? " key-exchange " : "", f->group);
    /* RFC 3207 4.2: forget everything learnt before TLS; the client must
     * say EHLO again. */
    smtpd_transaction_reset(s);
    s->helo_seen = false;
    s->esmtp = false;
    s->helo[0] = '\0';
    s->auth_user[0] = '\0';
    smtp_lines_reset(&s->lines);
    smtpd_set_state(s, SS_CONNECTED);
    if (s->implicit_tls) {
        /* RFC 8314 3.3: the SMTP greeting comes once TLS is up. */
        s->implicit_tls = false;
        smtpd_reply(s, "220 %s %s", s->cfg->o.hostname, s->cfg->o.banner);
        smtpd_flush(s);
        smtpd_update_reading(s);
        return;
    }
    smtpd_process(s);
}

static void on_stream_close(void *arg);

static const struct tls_stream_callbacks stream_cbs = {
    .on_read = on_read,
    .on_handshake = on_handshake,
    .on_end = on_end,
    .on_written = on_written,
    .on_close = on_stream_close,
};

/* ---- closing and freeing -------------------------------------------------- */

static void server_maybe_free(struct smtpd *d)
{
    if (!d->freeing || d->listeners_open > 0 || d->n_sessions > 0)
        return;
    while (d->listeners) {
        struct smtpd_listener *l = d->listeners;
        d->listeners = l->next;
        free(l);
    }
    cfg_unref(d->cfg);
    free(d);
}

void smtpd_session_maybe_free(struct smtpd_session *s)
{
    if (s->handles_open > 0 || s->holds > 0)
        return;
    struct smtpd *d = s->d;
    if (s->prev)
        s->prev->next = s->next;
    else
        d->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    d->n_sessions--;
    smtpd_transaction_reset(s);
    free(s->rcpts);
    buf_free(&s->in);
    buf_free(&s->out);
    cfg_unref(s->cfg);
    free(s);
    server_maybe_free(d);
}

static void on_handle_close(uv_handle_t *h)
{
    struct smtpd_session *s = h->data;
    s->handles_open--;
    smtpd_session_maybe_free(s);
}

static void hard_close(struct smtpd_session *s)
{
    if (s->hard_closed)
        return;
    s->hard_closed = true;
    s->closing = true;
    if (s->stream)
        tls_stream_close(s->stream); /* does nothing when already closing */
    /* Someone else (a loop-wide walk at exit) may have closed a handle
     * already; closing twice is not allowed. */
    if (!uv_is_closing((uv_handle_t *)&s->timer))
        uv_close((uv_handle_t *)&s->timer, on_handle_close);
}

/* The stream closed: after a graceful shutdown finished, or hard_close(). */
static void on_stream_close(void *arg)
{
    struct smtpd_session *s = arg;
    s->stream = NULL;
    hard_close(s);
    s->handles_open--;
    smtpd_session_maybe_free(s);
}

static void log_disconnect(struct smtpd_session *s)
{
    char line[512];
    size_t o = 0;
    static const enum smtp_verb order[] = {
        SMTP_V_HELO, SMTP_V_EHLO, SMTP_V_STARTTLS, SMTP_V_AUTH, SMTP_V_MAIL,
        SMTP_V_RCPT, SMTP_V_DATA, SMTP_V_BDAT,     SMTP_V_RSET, SMTP_V_NOOP,
        SMTP_V_VRFY, SMTP_V_EXPN, SMTP_V_HELP,     SMTP_V_QUIT, SMTP_V_UNKNOWN,
    };
    line[0] = '\0';
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]) && o < sizeof(line) - 40; i++) {
        enum smtp_verb v = order[i];
        if (!s->cnt_all[v])
            continue;
        char name[16];
        size_t k = 0;
        for (const char *p = smtp_verb_name(v); *p && k < sizeof(name) - 1; p++)
            name[k++] = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
        name[k] = '\0';
        int n;
        if (s->cnt_ok[v] == s->cnt_all[v])
            n = snprintf(line + o, sizeof(line) - o, " %s=%u", name, s->cnt_all[v]);
        else
            n = snprintf(line + o, sizeof(line) - o, " %s=%u/%u", name, s->cnt_ok[v],
                         s->cnt_all[v]);
        if (n > 0)
            o += (size_t)n;
    }
    if (s->commands_ok == s->commands)
        log_info("smtpd", "disconnect from %s[%s]%s commands=%u", smtpd_client_name(s), s->addr,
                 line, s->commands);
    else
        log_info("smtpd", "disconnect from %s[%s]%s commands=%u/%u", smtpd_client_name(s), s->addr,
                 line, s->commands_ok, s->commands);
}

/*
 * Close the session. graceful: send what is queued (and a TLS close_notify),
 * then shut the TCP connection down; the closing timer bounds the wait.
 */
void smtpd_session_close(struct smtpd_session *s, bool graceful)
{
    if (s->closing) {
        if (!graceful)
            hard_close(s);
        return;
    }
    s->closing = true;
    log_disconnect(s);
    /* A message being streamed is over: the owner can let it go now. */
    if (s->streaming)
        smtpd_body_reset(s);
    if (s->stream)
        tls_stream_read_stop(s->stream);
    if (!graceful) {
        hard_close(s);
        return;
    }
    smtpd_set_state(s, SS_CLOSING);
    smtpd_flush(s);
    if (s->hard_closed || !s->stream)
        return;
    /* Writes what is queued and a TLS close_notify, then FIN; the stream
     * closes itself when done (on_stream_close), or the closing timer
     * cuts the wait short. */
    tls_stream_shutdown(s->stream);
}

/* Reply and close: for 421 and 521. */
void smtpd_reply_close(struct smtpd_session *s, const char *text)
{
    smtpd_reply(s, "%s", text);
    smtpd_session_close(s, true);
}

/* ---- reading ----------------------------------------------------------- */

void smtpd_update_reading(struct smtpd_session *s)
{
    if (s->closing)
        return;
    /* Reading goes on while the session waits for the owner (SS_WAIT):
     * what arrives is kept, bounded by READ_CHUNK, and run when the wait
     * ends. Stopping and starting the read for each message would cost
     * two epoll_ctl(2) calls per message for nothing. */
    bool want = tls_stream_queued(s->stream) < WRITE_HIGH && !s->stream_paused &&
                (s->state == SS_TLS || s->in.len - s->in_off < READ_CHUNK);
    if (!want)
        tls_stream_read_stop(s->stream);
    else if (tls_stream_read_start(s->stream) != 0)
        smtpd_session_close(s, false);
}

static void on_timer(uv_timer_t *t)
{
    struct smtpd_session *s = t->data;
    if (s->state == SS_CLOSING || s->closing) {
        hard_close(s);
        return;
    }
    bool data = s->state == SS_DATA || s->state == SS_BDAT;
    if (data && s->timer_is_deadline)
        log_info("smtpd", "timeout after %s (data too slow) from %s[%s]",
                 smtp_verb_name(s->last_verb), smtpd_client_name(s), s->addr);
    else
        log_info("smtpd", "timeout after %s from %s[%s]", smtp_verb_name(s->last_verb),
                 smtpd_client_name(s), s->addr);
    if (s->state == SS_TLS) {
        smtpd_session_close(s, false);
        return;
    }
    smtpd_reply(s, "421 4.4.2 %s Error: timeout exceeded", s->cfg->hostname);
    smtpd_session_close(s, true);
}

static void set_timer(struct smtpd_session *s, uint64_t ms)
{
    uv_timer_start(&s->timer, on_timer, ms, 0);
}

/* ---- the message -------------------------------------------------------- */

void smtpd_log_reject(struct smtpd_session *s, const char *verb, const char *text, const char *to)
{
    log_info("smtpd", "NOQUEUE: reject: %s from %s[%s]: %s; from=<%s>%s%s%s proto=%s helo=<%s>",
             verb, smtpd_client_name(s), s->addr, text, s->mail.addr, to ? " to=<" : "",
             to ? to : "", to ? ">" : "", s->esmtp ? "ESMTP" : "SMTP", s->helo);
}

/* A bare CR or LF in reject mode: the end of the line or of the data is
 * unknowable, so answer and disconnect (as Postfix's
 * smtpd_forbid_bare_newline does). */
void smtpd_bare_newline_abort(struct smtpd_session *s, bool lf)
{
    log_info("smtpd", "improper line ending (bare <%s>) after %s from %s[%s]", lf ? "LF" : "CR",
             smtp_verb_name(s->last_verb), smtpd_client_name(s), s->addr);
    smtpd_reply(s, "521 5.5.2 %s Error: bare <%s> received", s->cfg->hostname, lf ? "LF" : "CR");
    smtpd_transaction_reset(s);
    smtpd_session_close(s, true);
}

/* ---- commands ------------------------------------------------------------ */

static bool cmd_helo(struct smtpd_session *s, struct view arg, bool esmtp)
{
    if (arg.len == 0) {
        smtpd_reply(s, "501 5.5.4 Syntax: %s hostname", esmtp ? "EHLO" : "HELO");
        return false;
    }
    /* RFC 5321 4.1.1.1: a domain or an address literal. Accept any printable
     * ASCII word (many clients send odd names), nothing else. */
    if (arg.len >= sizeof(s->helo) || memchr(arg.ptr, ' ', arg.len) ||
        smtp_has_8bit(arg.ptr, arg.len)) {
        smtpd_reply(s, "501 5.5.2 Syntax: %s hostname", esmtp ? "EHLO" : "HELO");
        return false;
    }
    for (size_t i = 0; i < arg.len; i++) {
        if (arg.ptr[i] < 33 || arg.ptr[i] > 126) {
            smtpd_reply(s, "501 5.5.2 Syntax: %s hostname", esmtp ? "EHLO" : "HELO");
            return false;
        }
    }
    memcpy(s->helo, arg.ptr, arg.len);
    s->helo[arg.len] = '\0';
    /* RFC 5321 4.1.4: EHLO in a transaction resets it. */
    smtpd_transaction_reset(s);
    s->helo_seen = true;
    s->esmtp = esmtp;
    smtpd_set_state(s, SS_READY);
    const struct smtpd_opts *o = &s->cfg->o;
    if (!esmtp) {
        smtpd_reply(s, "250 %s", o->hostname);
        return true;
    }
    smtpd_reply(s, "250-%s", o->hostname);
    smtpd_reply(s, "250-PIPELINING");
    smtpd_reply(s, "250-SIZE %llu", (unsigned long long)o->message_size_limit);
    if (o->tls && !s->tls_active)
        smtpd_reply(s, "250-STARTTLS");
    if (o->creds && s->tls_active && !s->auth_user[0])
        smtpd_reply(s, "250-AUTH PLAIN LOGIN");
    smtpd_reply(s, "250-ENHANCEDSTATUSCODES");
    smtpd_reply(s, "250-8BITMIME");
    smtpd_reply(s, "250-DSN");
    smtpd_reply(s, "250-SMTPUTF8");
    smtpd_reply(s, "250 CHUNKING");
    return true;
}

static bool in_transaction(const struct smtpd_session *s)
{
    return s->state == SS_MAIL || s->state == SS_RCPT;
}

static bool cmd_mail(struct smtpd_session *s, struct view arg)
{
    if (!s->helo_seen) {
        smtpd_reply(s, "503 5.5.1 Error: send HELO/EHLO first");
        return false;
    }
    if (in_transaction(s)) {
        smtpd_reply(s, "503 5.5.1 Error: nested MAIL command");
        return false;
    }
    /* RFC 6409 4.3 / RFC 8314 3.3: the submission ports take mail from
     * authenticated clients only, whatever their address. */
    if (s->role != SMTPD_ROLE_SMTP && !s->auth_user[0]) {
        smtpd_log_reject(s, "MAIL", "530 5.7.0 Authentication required", NULL);
        smtpd_reply(s, "530 5.7.0 Authentication required");
        return false;
    }
    const char *why = NULL;
    struct smtp_mail_args m;
    if (smtp_parse_mail(arg, s->esmtp, &m, &why) != 0) {
        smtpd_log_reject(s, "MAIL", why, NULL);
        smtpd_reply(s, "%s", why);
        return false;
    }
    if (!s->esmtp && (m.has_size || m.body || m.ret || m.envid[0])) {
        smtpd_reply(s, "555 5.5.4 MAIL parameters need EHLO");
        return false;
    }
    if (m.has_size && m.size > s->cfg->o.message_size_limit) {
        smtpd_reply(s, "552 5.3.4 Message size exceeds fixed limit");
        return false;
    }
    /* smtpd_sender_login_maps: an authenticated client sends only as the
     * addresses its login owns (Postfix's reject_sender_login_mismatch for
     * authenticated clients). */
    const struct smtpd_opts *o = &s->cfg->o;
    if (s->auth_user[0] && o->sender_allowed && !o->sender_allowed(o->arg, s->auth_user, m.addr)) {
        char text[SMTP_PATH_MAX + 320];
        snprintf(text, sizeof(text), "553 5.7.1 Sender address rejected: not owned by user %s",
                 s->auth_user);
        char logtext[2 * SMTP_PATH_MAX + 400];
        snprintf(logtext, sizeof(logtext), "%s; sender=<%s>", text, m.addr);
        smtpd_log_reject(s, "MAIL", logtext, NULL);
        smtpd_reply(s, "%s", text);
        return false;
    }
    s->mail = m;
    smtpd_set_state(s, SS_MAIL);
    smtpd_reply(s, "250 2.1.0 Ok");
    return true;
}

static bool cmd_rcpt(struct smtpd_session *s, struct view arg)
{
    if (!in_transaction(s)) {
        smtpd_reply(s, "503 5.5.1 Error: need MAIL command");
        return false;
    }
    s->rcpt_tried++;
    const char *why = NULL;
    struct smtp_rcpt_args r;
    if (smtp_parse_rcpt(arg, s->mail.smtputf8, &r, &why) != 0) {
        smtpd_log_reject(s, "RCPT", why, NULL);
        smtpd_reply(s, "%s", why);
        return false;
    }
    if (s->n_rcpts >= s->cfg->o.recipient_limit) {
        smtpd_reply(s, "452 4.5.3 Error: too many recipients");
        return false;
    }
    const struct smtpd_opts *o = &s->cfg->o;
    /* RFC 5321 4.5.1: mail to the bare <postmaster> is accepted from
     * anyone (it goes to one fixed address, not where the client says). */
    if (r.postmaster)
        str_copy(r.addr, o->postmaster, sizeof(r.addr));
    bool allowed = r.postmaster || s->auth_user[0] ||
                   (s->role == SMTPD_ROLE_SMTP && o->relay_allowed &&
                    o->relay_allowed(o->arg, (struct sockaddr *)&s->peer));
    if (!allowed) {
        char text[SMTP_PATH_MAX + 64];
        snprintf(text, sizeof(text), "554 5.7.1 <%s>: Relay access denied", r.addr);
        smtpd_log_reject(s, "RCPT", text, r.addr);
        smtpd_reply(s, "%s", text);
        return false;
    }
    if (s->n_rcpts == s->cap_rcpts) {
        size_t ncap = s->cap_rcpts ? s->cap_rcpts * 2 : 8;
        struct smtpd_rcpt *nv = realloc(s->rcpts, ncap * sizeof(*nv));
        if (!nv) {
            smtpd_reply(s, "452 4.3.1 Insufficient system resources");
            return false;
        }
        s->rcpts = nv;
        s->cap_rcpts = ncap;
    }
    struct smtpd_rcpt *x = &s->rcpts[s->n_rcpts];
    x->addr = strdup(r.addr);
    x->orcpt = r.orcpt[0] ? strdup(r.orcpt) : "";
    x->notify = r.notify; /* the bit values match SMTPD_NOTIFY_* */
    if (!x->addr || !x->orcpt) {
        free((char *)x->addr);
        smtpd_reply(s, "452 4.3.1 Insufficient system resources");
        return false;
    }
    s->n_rcpts++;
    smtpd_set_state(s, SS_RCPT);
    smtpd_reply(s, "250 2.1.5 Ok");
    return true;
}

static bool cmd_starttls(struct smtpd_session *s, struct view arg)
{
    if (!s->cfg->o.tls) {
        smtpd_reply(s, "502 5.5.1 Error: command not implemented");
        return false;
    }
    if (arg.len) {
        smtpd_reply(s, "501 5.5.4 Syntax: STARTTLS");
        return false;
    }
    if (s->tls_started) {
        smtpd_reply(s, "554 5.5.1 Error: TLS already active");
        return false;
    }
    if (in_transaction(s)) {
        smtpd_reply(s, "503 5.5.1 Error: MAIL transaction in progress");
        return false;
    }
    /* RFC 3207 4.2 / CVE-2011-0411: nothing the client sent after STARTTLS
     * in the clear may be read as a command under TLS. */
    size_t extra = s->in.len - s->in_off;
    if (extra > 0) {
        log_warn("smtpd", "%s[%s]: %zu bytes of plaintext pipelined after STARTTLS discarded",
                 smtpd_client_name(s), s->addr, extra);
        s->in_off = s->in.len;
    }
    smtp_lines_reset(&s->lines);
    /* The 220 is queued in the clear first; the stream sends it before
     * anything of TLS. */
    smtpd_reply(s, "220 2.0.0 Ready to start TLS");
    smtpd_flush(s);
    if (s->closing)
        return true;
    s->tls_started = true;
    smtpd_set_state(s, SS_TLS);
    if (tls_stream_start_tls(s->stream, s->cfg->o.tls, NULL, TLS_VERIFY_NONE) != 0) {
        log_warn("smtpd", "%s[%s]: cannot start TLS", smtpd_client_name(s), s->addr);
        smtpd_session_close(s, false);
    }
    return true;
}

/* ---- AUTH -------------------------------------------------------------- */

static void auth_done(void *arg, bool ok)
{
    struct smtpd_session *s = arg;
    s->holds--;
    if (s->closing) {
        smtpd_session_maybe_free(s);
        return;
    }
    if (ok) {
        str_copy(s->auth_user, s->auth_try_user, sizeof(s->auth_user));
        log_info("smtpd", "%s[%s]: sasl_method=%s, sasl_username=%s", smtpd_client_name(s), s->addr,
                 s->auth_method, s->auth_user);
        smtpd_reply(s, "235 2.7.0 Authentication successful");
        s->cnt_ok[SMTP_V_AUTH]++;
        s->commands_ok++;
    } else {
        log_warn("smtpd", "%s[%s]: SASL %s authentication failed", smtpd_client_name(s), s->addr,
                 s->auth_method);
        smtpd_reply(s, "535 5.7.8 Error: authentication failed");
    }
    memset(s->auth_try_user, 0, sizeof(s->auth_try_user));
    smtpd_set_state(s, smtpd_idle_state(s));
    if (!s->in_process)
        smtpd_process(s);
}

static void auth_check(struct smtpd_session *s, const char *user, const char *pass)
{
    str_copy(s->auth_try_user, user, sizeof(s->auth_try_user));
    if (strlen(user) >= sizeof(s->auth_try_user) ||
        smtpd_auth_check(s->d->loop, s->cfg->o.creds, user, pass, auth_done, s) != 0) {
        smtpd_reply(s, "454 4.7.0 Temporary authentication failure");
        smtpd_set_state(s, smtpd_idle_state(s));
        return;
    }
    s->holds++;
    smtpd_set_state(s, SS_WAIT);
}

/* Decode one SASL response. Returns its length or -1 after replying. */
static int auth_decode(struct smtpd_session *s, struct view v, unsigned char *out, size_t size)
{
    if (v.len == 1 && v.ptr[0] == '*') {
        smtpd_reply(s, "501 5.7.0 Authentication aborted");
        return -1;
    }
    if (v.len == 1 && v.ptr[0] == '=')
        return 0; /* RFC 4954 4: an empty initial response */
    int n = smtp_base64_decode(v.ptr, v.len, out, size - 1);
    if (n < 0) {
        smtpd_reply(s, "501 5.5.2 Cannot decode response");
        return -1;
    }
    out[n] = '\0';
    return n;
}

static void auth_plain(struct smtpd_session *s, struct view v)
{
    unsigned char dec[SMTP_CMD_LINE_MAX];
    int n = auth_decode(s, v, dec, sizeof(dec));
    if (n < 0) {
        smtpd_set_state(s, smtpd_idle_state(s));
        return;
    }
    /* RFC 4616 2: [authzid] NUL authcid NUL passwd */
    const char *p = (const char *)dec;
    const char *z1 = memchr(p, '\0', (size_t)n);
    const char *z2 = z1 ? memchr(z1 + 1, '\0', (size_t)(p + n - z1 - 1)) : NULL;
    if (!z1 || !z2 || memchr(z2 + 1, '\0', (size_t)(p + n - z2 - 1)) || z2 == z1 + 1) {
        smtpd_reply(s, "501 5.5.2 Malformed PLAIN response");
        smtpd_set_state(s, smtpd_idle_state(s));
        return;
    }
    const char *authz = p, *user = z1 + 1, *pass = z2 + 1;
    if (*authz && strcmp(authz, user) != 0) {
        smtpd_reply(s, "535 5.7.8 Error: authorization identity not allowed");
        smtpd_set_state(s, smtpd_idle_state(s));
        return;
    }
    auth_check(s, user, pass);
    memset(dec, 0, sizeof(dec));
}

static void auth_line(struct smtpd_session *s, struct view v)
{
    if (s->auth_step == AUTH_PLAIN) {
        auth_plain(s, v);
        return;
    }
    unsigned char dec[SMTP_CMD_LINE_MAX];
    int n = auth_decode(s, v, dec, sizeof(dec));
    if (n < 0 || memchr(dec, '\0', (size_t)n)) {
        if (n >= 0)
            smtpd_reply(s, "501 5.5.2 Malformed LOGIN response");
        smtpd_set_state(s, smtpd_idle_state(s));
        return;
    }
    if (s->auth_step == AUTH_LOGIN_USER) {
        str_copy(s->auth_try_user, (const char *)dec, sizeof(s->auth_try_user));
        s->auth_step = AUTH_LOGIN_PASS;
        smtpd_reply(s, "334 UGFzc3dvcmQ6"); /* "Password:" */
        smtpd_set_state(s, SS_AUTH);
        return;
    }
    char user[256];
    str_copy(user, s->auth_try_user, sizeof(user));
    auth_check(s, user, (const char *)dec);
    memset(dec, 0, sizeof(dec));
}

static bool cmd_auth(struct smtpd_session *s, struct view arg)
{
    if (!s->cfg->o.creds) {
        smtpd_reply(s, "502 5.5.1 Error: authentication not enabled");
        return false;
    }
    if (!s->tls_active) {
        smtpd_reply(s, "538 5.7.11 Encryption required for requested authentication mechanism");
        return false;
    }
    if (!s->esmtp) {
        smtpd_reply(s, "503 5.5.1 Error: send EHLO first");
        return false;
    }
    if (s->auth_user[0]) {
        smtpd_reply(s, "503 5.5.1 Error: already authenticated");
        return false;
    }
    if (in_transaction(s)) {
        smtpd_reply(s, "503 5.5.1 Error: MAIL transaction in progress");
        return false;
    }
    size_t m = 0;
    while (m < arg.len && arg.ptr[m] != ' ')
        m++;
    struct view mech = {arg.ptr, m};
    struct view init = {arg.ptr + m, 0};
    while (init.ptr < arg.ptr + arg.len && *init.ptr == ' ')
        init.ptr++;
    init.len = (size_t)(arg.ptr + arg.len - init.ptr);
    if (view_eq_ci(mech, "PLAIN")) {
        s->auth_method = "PLAIN";
        s->auth_step = AUTH_PLAIN;
        if (init.len) {
            auth_plain(s, init);
        } else {
            smtpd_reply(s, "334 ");
            smtpd_set_state(s, SS_AUTH);
        }
        return true;
    }
    if (view_eq_ci(mech, "LOGIN")) {
        s->auth_method = "LOGIN";
        s->auth_step = AUTH_LOGIN_USER;
        if (init.len) {
            auth_line(s, init);
        } else {
            smtpd_reply(s, "334 VXNlcm5hbWU6"); /* "Username:" */
            smtpd_set_state(s, SS_AUTH);
        }
        return true;
    }
    smtpd_reply(s, "504 5.5.4 Unrecognized authentication type");
    return false;
}

/* ---- dispatch ------------------------------------------------------------ */

static void handle_line(struct smtpd_session *s, enum smtp_eol eol)
{
    if (eol != SMTP_EOL_CRLF && s->cfg->o.bare_newline == SMTPD_BARE_REJECT) {
        smtpd_bare_newline_abort(s, eol == SMTP_EOL_LF);
        return;
    }
    if (s->state == SS_AUTH) {
        if (s->lines.overflow) {
            smtpd_reply(s, "500 5.5.2 Error: line too long");
            smtpd_set_state(s, smtpd_idle_state(s));
            return;
        }
        auth_line(s, (struct view){s->lines.line, s->lines.len});
        return;
    }
    s->commands++;
    if (s->lines.overflow) {
        s->cnt_all[SMTP_V_UNKNOWN]++;
        s->last_verb = SMTP_V_UNKNOWN;
        smtpd_reply(s, "500 5.5.2 Error: line too long");
        return;
    }
    struct smtp_cmd c;
    const char *why = NULL;
    if (smtp_cmd_parse(s->lines.line, s->lines.len, &c, &why) != 0) {
        s->cnt_all[SMTP_V_UNKNOWN]++;
        s->last_verb = SMTP_V_UNKNOWN;
        smtpd_reply(s, "%s", why);
        return;
    }
    s->last_verb = c.verb;
    s->cnt_all[c.verb]++;
    bool ok = false;
    switch (c.verb) {
    case SMTP_V_EHLO:
        ok = cmd_helo(s, c.arg, true);
        break;
    case SMTP_V_HELO:
        ok = cmd_helo(s, c.arg, false);
        break;
    case SMTP_V_MAIL:
        ok = cmd_mail(s, c.arg);
        break;
    case SMTP_V_RCPT:
        ok = cmd_rcpt(s, c.arg);
        break;
    case SMTP_V_DATA:
        /* Counted when the message is answered (owner_finish). */
        smtpd_cmd_data(s, c.arg, eol);
        return;
    case SMTP_V_BDAT:
        /* Counted when the chunk is answered. */
        smtpd_cmd_bdat(s, c.arg);
        return;
    case SMTP_V_RSET:
        if (c.arg.len) {
            smtpd_reply(s, "501 5.5.4 Syntax: RSET");
            break;
        }
        smtpd_transaction_reset(s);
        smtpd_set_state(s, smtpd_idle_state(s));
        smtpd_reply(s, "250 2.0.0 Ok");
        ok = true;
        break;
    case SMTP_V_NOOP:
        smtpd_reply(s, "250 2.0.0 Ok");
        ok = true;
        break;
    case SMTP_V_QUIT:
        s->quit = true;
        s->cnt_ok[c.verb]++;
        s->commands_ok++;
        smtpd_reply_close(s, "221 2.0.0 Bye");
        return;
    case SMTP_V_VRFY:
        if (c.arg.len == 0) {
            smtpd_reply(s, "501 5.5.4 Syntax: VRFY address");
            break;
        }
        /* RFC 5321 3.5.3: 252 when we will not verify but will try. */
        smtpd_reply(s, "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery");
        ok = true;
        break;
    case SMTP_V_EXPN:
        smtpd_reply(s, "502 5.5.1 Error: command not implemented");
        break;
    case SMTP_V_HELP:
        smtpd_reply(s, "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP "
                       "STARTTLS AUTH");
        ok = true;
        break;
    case SMTP_V_STARTTLS:
        ok = cmd_starttls(s, c.arg);
        break;
    case SMTP_V_AUTH:
        /* Counted when the exchange ends (auth_done). */
        cmd_auth(s, c.arg);
        return;
    default:
        smtpd_reply(s, "502 5.5.2 Error: command not recognized");
        break;
    }
    if (ok) {
        s->cnt_ok[c.verb]++;
        s->commands_ok++;
    }
}

/*
 * Run the state machine over the input we hold, until it is used up or the
 * session has to wait. Then send the replies (RFC 2920 3.2: a server sends
 * its replies when its input is empty) and decide whether to read more.
 */
void smtpd_process(struct smtpd_session *s)
{
    s->in_process = true;
again:
    while (!s->closing && s->in_off < s->in.len) {
        const char *p = s->in.data + s->in_off;
        size_t n = s->in.len - s->in_off;
        if (s->state == SS_WAIT || s->state == SS_TLS || s->state == SS_CLOSING)
            break;
        /* A client that pipelines without reading its replies waits for
         * them to drain before more commands are run (RFC 2920 3.1). */
        if (s->out.len + tls_stream_queued(s->stream) > WRITE_HIGH)
            break;
        if (s->state == SS_DATA || s->state == SS_BDAT) {
            long k = smtpd_body_feed(s, p, n);
            if (k < 0)
                break;
            s->in_off += (size_t)k;
            continue;
        }
        bool complete;
        enum smtp_eol eol;
        s->in_off += smtp_lines_feed(&s->lines, p, n, &complete, &eol);
        if (!complete)
            continue;
        handle_line(s, eol);
        smtp_lines_next(&s->lines);
        if (!s->closing && s->errors >= s->cfg->o.hard_error_limit) {
            log_info("smtpd", "too many errors after %s from %s[%s]", smtp_verb_name(s->last_verb),
                     smtpd_client_name(s), s->addr);
            smtpd_reply_close(s, "421 4.7.0 Error: too many errors");
            break;
        }
        if (!s->closing && s->state != SS_WAIT && s->state != SS_DATA && s->state != SS_BDAT)
            arm_state_timer(s);
    }
    if (s->in_off == s->in.len) {
        buf_reset(&s->in);
        s->in_off = 0;
    }
    smtpd_flush(s);
    /* Stopped for the output above and it was taken at once: go on. (It
     * usually is not: the stream writes at the end of the loop iteration,
     * and on_written resumes.) */
    if (!s->closing && s->in_off < s->in.len && s->stream && tls_stream_queued(s->stream) == 0 &&
        s->state != SS_WAIT && s->state != SS_TLS && !s->stream_paused)
        goto again;
    s->in_process = false;
    smtpd_update_reading(s);
}

/* ---- accepting ----------------------------------------------------------- */

static size_t count_from(const struct smtpd *d, const char *addr, size_t *total)
{
    size_t n = 0;
    *total = 0;
    for (const struct smtpd_session *x = d->sessions; x; x = x->next) {
        if (x->closing)
            continue;
        (*total)++;
        if (strcmp(x->addr, addr) == 0)
            n++;
    }
    return n;
}

static void on_connection(uv_stream_t *server, int status)
{
    struct smtpd_listener *l = server->data;
    struct smtpd *d = l->d;
    if (status < 0) {
        log_warn("smtpd", "accept on %s: %s", l->name, uv_strerror(status));
        return;
    }
    struct smtpd_session *s = calloc(1, sizeof(*s));
    if (!s)
        return;
    /* Replies are bounded by OUT_MAX per flush, and reading stops once
     * WRITE_HIGH is queued: the queue stays well under this. */
    const struct tls_stream_opts sopts = {.write_max = 2 * OUT_MAX + WRITE_HIGH};
    s->stream = tls_stream_new(d->loop, &stream_cbs, s, &sopts);
    if (!s->stream) {
        free(s);
        return;
    }
    s->d = d;
    s->cfg = d->cfg;
    s->cfg->refs++;
    uv_timer_init(d->loop, &s->timer);
    s->timer.data = s;
    s->handles_open = 2;
    buf_init(&s->in, IN_MAX);
    buf_init(&s->out, OUT_MAX);
    buf_init(&s->body, 0);
    smtp_lines_init(&s->lines, s->cmdline, sizeof(s->cmdline));
    s->state = SS_CONNECTED;
    s->last_verb = SMTP_V_UNKNOWN;
    s->next = d->sessions;
    if (d->sessions)
        d->sessions->prev = s;
    d->sessions = s;
    d->n_sessions++;
    if (tls_stream_accept(s->stream, server) != 0) {
        s->closing = true;
        hard_close(s);
        return;
    }
    int len = sizeof(s->peer);
    uv_tcp_getpeername(tls_stream_tcp(s->stream), (struct sockaddr *)&s->peer, &len);
    if (s->peer.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)&s->peer;
        uv_ip6_name(a6, s->addr, sizeof(s->addr));
        /* Show a v4-mapped address as IPv4, as Postfix does. */
        if (strncmp(s->addr, "::ffff:", 7) == 0 && strchr(s->addr + 7, '.'))
            memmove(s->addr, s->addr + 7, strlen(s->addr + 7) + 1);
    } else {
        uv_ip4_name((const struct sockaddr_in *)&s->peer, s->addr, sizeof(s->addr));
    }
    uv_tcp_nodelay(tls_stream_tcp(s->stream), 1);
    s->role = l->role;
    log_info("smtpd", "connect from %s[%s] to %s (%s)", smtpd_client_name(s), s->addr, l->name,
             smtpd_role_name(s->role));
    size_t total;
    size_t mine = count_from(d, s->addr, &total);
    const struct smtpd_opts *o = &s->cfg->o;
    if (s->role == SMTPD_ROLE_SUBMISSIONS) {
        /* Implicit TLS (RFC 8314): no plaintext byte is ever sent, so a
         * refusal is a close. */
        if (!o->tls || total > o->session_limit ||
            (mine > o->client_limit &&
             !(o->relay_allowed && o->relay_allowed(o->arg, (struct sockaddr *)&s->peer)))) {
            log_warn("smtpd", "%s[%s]: %s: closing", smtpd_client_name(s), s->addr,
                     !o->tls ? "no TLS certificate for implicit TLS" : "too many connections");
            smtpd_session_close(s, false);
            return;
        }
        s->implicit_tls = true;
        s->tls_started = true;
        smtpd_set_state(s, SS_TLS);
        if (tls_stream_start_tls(s->stream, o->tls, NULL, TLS_VERIFY_NONE) != 0) {
            log_warn("smtpd", "%s[%s]: cannot start TLS", smtpd_client_name(s), s->addr);
            smtpd_session_close(s, false);
            return;
        }
        smtpd_update_reading(s);
        return;
    }
    if (total > o->session_limit) {
        log_warn("smtpd", "too many sessions: refusing %s[%s]", smtpd_client_name(s), s->addr);
        smtpd_reply_close(s, "421 4.7.0 Error: too many connections");
        return;
    }
    /* As Postfix's smtpd_client_event_limit_exceptions: clients that may
     * relay (mynetworks) are trusted not to flood us. */
    if (mine > o->client_limit &&
        !(o->relay_allowed && o->relay_allowed(o->arg, (struct sockaddr *)&s->peer))) {
        log_warn("smtpd", "too many connections from %s[%s]", smtpd_client_name(s), s->addr);
        smtpd_reply(s, "421 4.7.0 %s Error: too many connections from %s", o->hostname, s->addr);
        smtpd_session_close(s, true);
        return;
    }
    smtpd_reply(s, "220 %s %s", o->hostname, o->banner);
    smtpd_set_state(s, SS_CONNECTED);
    smtpd_flush(s);
    smtpd_update_reading(s);
}

/* ---- the server ------------------------------------------------------------ */

struct smtpd *smtpd_new(uv_loop_t *loop, const struct smtpd_opts *opts, struct buf *err)
{
    struct smtpd *d = calloc(1, sizeof(*d));
    if (!d) {
        buf_append_str(err, "smtpd: out of memory\n");
        return NULL;
    }
    d->loop = loop;
    if (getrandom(&d->msgid_seq, sizeof(d->msgid_seq), GRND_NONBLOCK) !=
        (ssize_t)sizeof(d->msgid_seq))
        d->msgid_seq = (uint64_t)time_now_ms() ^ ((uint64_t)(uintptr_t)d << 16);
    d->cfg = cfg_new(opts, err);
    if (!d->cfg) {
        free(d);
        return NULL;
    }
    return d;
}

int smtpd_set_opts(struct smtpd *d, const struct smtpd_opts *opts, struct buf *err)
{
    struct smtpd_cfg *c = cfg_new(opts, err);
    if (!c)
        return ERR_INVAL;
    cfg_unref(d->cfg);
    d->cfg = c;
    return 0;
}

static void on_listener_close(uv_handle_t *h)
{
    struct smtpd_listener *l = h->data;
    struct smtpd *d = l->d;
    d->listeners_open--;
    /* Unlink and free. */
    for (struct smtpd_listener **pp = &d->listeners; *pp; pp = &(*pp)->next) {
        if (*pp == l) {
            *pp = l->next;
            break;
        }
    }
    free(l);
    server_maybe_free(d);
}

const char *smtpd_role_name(enum smtpd_role r)
{
    switch (r) {
    case SMTPD_ROLE_SUBMISSION:
        return "submission";
    case SMTPD_ROLE_SUBMISSIONS:
        return "submissions";
    case SMTPD_ROLE_SMTP:
        break;
    }
    return "smtp";
}

int smtpd_listen(struct smtpd *d, const struct sockaddr *sa, struct buf *err)
{
    return smtpd_listen_role(d, sa, SMTPD_ROLE_SMTP, NULL, err);
}

int smtpd_listen_role(struct smtpd *d, const struct sockaddr *sa, enum smtpd_role role,
                      struct smtpd_listener **out, struct buf *err)
{
    if (out)
        *out = NULL;
    struct smtpd_listener *l = calloc(1, sizeof(*l));
    if (!l)
        return ERR_NOMEM;
    l->d = d;
    l->role = role;
    sockaddr_text(sa, l->name, sizeof(l->name));
    uv_tcp_init(d->loop, &l->tcp);
    l->tcp.data = l;
    l->next = d->listeners;
    d->listeners = l;
    d->listeners_open++;
    int rc = uv_tcp_bind(&l->tcp, sa, sa->sa_family == AF_INET6 ? UV_TCP_IPV6ONLY : 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&l->tcp, 128, on_connection);
    if (rc != 0) {
        buf_printf(err, "cannot listen on %s: %s\n", l->name, uv_strerror(rc));
        uv_close((uv_handle_t *)&l->tcp, on_listener_close);
        return rc == UV_EADDRINUSE ? ERR_EXISTS : ERR_IO;
    }
    log_info("smtpd", "listening on %s (%s)", l->name, smtpd_role_name(role));
    if (out)
        *out = l;
    return 0;
}

void smtpd_listener_set_role(struct smtpd_listener *l, enum smtpd_role role)
{
    if (l->role != role)
        log_info("smtpd", "listener %s: role %s -> %s", l->name, smtpd_role_name(l->role),
                 smtpd_role_name(role));
    l->role = role;
}

void smtpd_listener_close(struct smtpd_listener *l)
{
    if (!l || uv_is_closing((uv_handle_t *)&l->tcp))
        return;
    log_info("smtpd", "no longer listening on %s (%s)", l->name, smtpd_role_name(l->role));
    uv_close((uv_handle_t *)&l->tcp, on_listener_close);
}

void smtpd_stop_listening(struct smtpd *d)
{
    for (struct smtpd_listener *l = d->listeners; l; l = l->next)
        if (!uv_is_closing((uv_handle_t *)&l->tcp))
            uv_close((uv_handle_t *)&l->tcp, on_listener_close);
}

size_t smtpd_active(const struct smtpd *d)
{
    return d ? d->n_sessions : 0;
}

void smtpd_close_sessions(struct smtpd *d)
{
    for (struct smtpd_session *s = d->sessions; s; s = s->next) {
        if (s->closing)
            continue;
        /* The 421 goes out if the socket takes it now; the connection is
         * closed at once either way, so the server is gone when the loop
         * has run once more. */
        if (s->state != SS_TLS) {
            smtpd_reply(s, "421 4.3.2 %s Service shutting down, closing transmission channel",
                        s->cfg->hostname);
            smtpd_flush(s);
        }
        log_info("smtpd", "%s[%s]: session dropped at shutdown", smtpd_client_name(s), s->addr);
        smtpd_session_close(s, false);
    }
}

void smtpd_free(struct smtpd *d)
{
    if (!d)
        return;
    d->freeing = true;
    smtpd_stop_listening(d);
    smtpd_close_sessions(d);
    server_maybe_free(d);
}
