/*
 * client.c - the SMTP client session (delivery side) on libuv.
 *
 * Standards: RFC 5321 (3.3 mail transactions, 4.1.1 commands, 4.2 replies,
 * 4.5.2 transparency, 4.5.3.2 timeouts), RFC 2920 PIPELINING, RFC 1870 SIZE,
 * RFC 3207 STARTTLS, RFC 6531 SMTPUTF8, RFC 6152 8BITMIME, RFC 3461 DSN
 * parameters, RFC 2034 / 3463 enhanced status codes, RFC 4954 AUTH with
 * PLAIN (RFC 4616) or LOGIN (the caller's credentials; never logged, and
 * never sent without TLS when the caller requires it).
 *
 * Layers: tls_stream (TCP, and TLS once STARTTLS succeeded) -> line reader ->
 * reply parser -> the state machine below -> events to the owner.
 *
 * Invariants:
 *  - One state variable, changed only by set_state(), which logs the change
 *    and re-arms the one session timer with the state's timeout.
 *  - With PIPELINING, commands sent and replies received are tracked apart:
 *    pend[] holds what still owes a reply, in order (RFC 2920 3.1). Only MAIL,
 *    RCPT and DATA are grouped; EHLO, STARTTLS, RSET and QUIT wait.
 *  - After STARTTLS's 220 any plaintext byte already received is a protocol
 *    error (RFC 3207 5); all EHLO knowledge is dropped and EHLO is sent again.
 *  - A recipient's outcome is final once set; a session failure fills only the
 *    outcomes that are still empty (including recipients the server accepted
 *    whose end-of-data reply never came: they are deferred).
 *  - No event runs before smtp_client_new() returns or inside
 *    smtp_client_send(); the session is freed only after every handle's close
 *    callback has run.
 *  - Every buffer is bounded: input lines (SMTP_REPLY_LINE_MAX), replies
 *    (SMTP_REPLY_*), queued body output (BODY_INFLIGHT_MAX).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp.h"

#define COMPONENT "smtp"
#define IN_MAX (SMTP_REPLY_LINE_MAX + 2)
#define BODY_CHUNK (32 * 1024)
#define BODY_INFLIGHT_MAX (256 * 1024)
#define CMD_MAX (1024 * 1024)
#define PATH_MAX_OCTETS 256 /* RFC 5321 4.5.3.1.3, with the brackets */

static const char *const stage_names[SMTP_ST_COUNT] = {
    [SMTP_ST_CONNECT] = "connect", [SMTP_ST_GREETING] = "greeting", [SMTP_ST_EHLO] = "ehlo",
    [SMTP_ST_HELO] = "helo",       [SMTP_ST_STARTTLS] = "starttls", [SMTP_ST_TLS] = "tls",
    [SMTP_ST_AUTH] = "auth",       [SMTP_ST_IDLE] = "idle",         [SMTP_ST_RSET] = "rset",
    [SMTP_ST_MAIL] = "mail",       [SMTP_ST_RCPT] = "rcpt",         [SMTP_ST_DATA] = "data",
    [SMTP_ST_BODY] = "body",       [SMTP_ST_DOT] = "dot",           [SMTP_ST_QUIT] = "quit",
    [SMTP_ST_CLOSING] = "closing", [SMTP_ST_CLOSED] = "closed",
};

const char *smtp_stage_name(enum smtp_stage st)
{
    if ((unsigned)st >= SMTP_ST_COUNT)
        return "?";
    return stage_names[st];
}

/* What a pending reply answers. */
enum pend_kind { P_MAIL, P_RCPT, P_DATA, P_DOT_EMPTY };
struct pend {
    enum pend_kind kind;
    size_t idx; /* recipient index for P_RCPT */
};

struct smtp_client {
    uv_loop_t *loop;
    struct tls_stream *stream; /* the connection, TCP and TLS */
    uv_timer_t timer;          /* the one per-state timeout */
    uv_timer_t later;          /* runs deferred events (never inside an API call) */
    int open_handles;          /* the two timers and the stream */

    enum smtp_stage st;
    char *helo;
    char *host;
    char *verify_host;
    struct sockaddr_storage addr;
    char ip[64];
    char local_ip[64]; /* our address, once connected */
    unsigned port;
    char relay[320];
    enum smtp_tls_mode tlsmode;
    struct tls_ctx *tls_ctx;
    smtp_tls_check_cb tls_check;
    char *auth_user;
    char *auth_pass;
    bool auth_tls_required;
    bool auth_login_step; /* LOGIN: the user name was sent, the password is next */
    bool authenticated;
    struct smtp_timeouts to;
    smtp_client_cb cb;
    void *arg;

    struct buf in; /* plaintext not yet split into lines */
    struct smtp_reply reply;
    struct smtp_ext ext;
    bool tried_helo;
    bool established;
    bool starttls_sent;

    bool tls_started; /* STARTTLS answered 220: the stream speaks TLS */
    bool tls_on;      /* handshake done, traffic goes through tls */
    bool tls_tried;   /* facts are meaningful */
    struct tls_facts facts;

    bool closing;
    bool free_on_close;
    bool in_send; /* inside smtp_client_send(): events wait */
    bool broken;  /* must not carry another message */
    unsigned nmsgs;
    struct smtp_outcome result;
    char fail_reply[512];       /* the reply behind the next fail_session(), if any */
    bool fail_tls_missing;      /* the next fail_session() is for a required TLS
                                   not offered or refused */
    enum smtp_stage fail_stage; /* where fail_session() found the session */
    char greeting[256];         /* the server's 2xx greeting on one line */

    /* The transaction in progress. */
    struct smtp_msg *msg;
    bool *accepted; /* per recipient: 250 to RCPT, final reply pending */
    size_t naccepted;
    bool mail_ok;
    bool mail_failed;
    bool need_rset;
    bool done_pending; /* SMTP_EV_DONE to run from the later timer */
    size_t next_rcpt;  /* without PIPELINING: next RCPT to send */
    struct pend *pend;
    size_t pend_head, pend_tail;

    /* The body writer. */
    struct smtp_stuff stuff;
    uint64_t body_off;
    bool body_end_sent;
    char *chunk; /* BODY_CHUNK bytes for smtp_msg.read */
    struct buf out;
};

static void fail_session(struct smtp_client *c, enum smtp_action act, const char *status, int err,
                         int code, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void close_session(struct smtp_client *c);
static void start_mail(struct smtp_client *c);
static void pump_body(struct smtp_client *c);

/* The content length of a message, from its view or its reader. */
static uint64_t msg_size(const struct smtp_msg *m)
{
    return m->read ? m->size : m->body.len;
}

/* ---- small helpers -------------------------------------------------------- */

static char *dup_str(const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s);
    char *p = malloc(n + 1);
    if (p)
        memcpy(p, s, n + 1);
    return p;
}

static uint32_t stage_timeout(const struct smtp_client *c, enum smtp_stage st)
{
    /* RFC 5321 4.5.3.2 minimums where the caller gave none. */
    const struct smtp_timeouts *t = &c->to;
    switch (st) {
    case SMTP_ST_CONNECT:
        return t->connect ? t->connect : 30000;
    case SMTP_ST_GREETING:
        return t->greeting ? t->greeting : 300000;
    case SMTP_ST_EHLO:
    case SMTP_ST_HELO:
    case SMTP_ST_AUTH:
        return t->helo ? t->helo : 300000;
    case SMTP_ST_STARTTLS:
    case SMTP_ST_TLS:
        return t->starttls ? t->starttls : 300000;
    case SMTP_ST_RSET:
        return t->rset ? t->rset : 20000;
    case SMTP_ST_MAIL:
        return t->mail ? t->mail : 300000;
    case SMTP_ST_RCPT:
        return t->rcpt ? t->rcpt : 300000;
    case SMTP_ST_DATA:
        return t->data_init ? t->data_init : 120000;
    case SMTP_ST_BODY:
        return t->data_block ? t->data_block : 180000;
    case SMTP_ST_DOT:
        return t->data_done ? t->data_done : 600000;
    case SMTP_ST_QUIT:
        return t->quit ? t->quit : 300000;
    default:
        return 0;
    }
}

static void on_timeout(uv_timer_t *t);

static void arm_timer(struct smtp_client *c)
{
    uint32_t ms = stage_timeout(c, c->st);
    if (ms == 0 || c->closing)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, on_timeout, ms, 0);
}

/* The single setter of the state. */
static void set_state(struct smtp_client *c, enum smtp_stage st)
{
    if (c->st != st)
        log_debug(COMPONENT, "%s: %s -> %s", c->relay, smtp_stage_name(c->st), smtp_stage_name(st));
    c->st = st;
    arm_timer(c);
}

static void outcome_set(struct smtp_outcome *o, enum smtp_action act, int code, const char *status,
                        int err, const char *text)
{
    o->action = act;
    o->code = code;
    str_copy(o->status, status ? status : "", sizeof(o->status));
    o->err = err;
    str_copy(o->text, text ? text : "", sizeof(o->text));
    o->reply[0] = '\0';
    o->stage = SMTP_ST_IDLE; /* the caller says where, when it matters */
    o->tls_missing = false;
}

/* The action and status a reply stands for: RFC 5321 4.2.1 classes, the
 * enhanced code when given, else class.0.0. */
static enum smtp_action reply_action(int code)
{
    if (code >= 200 && code < 300)
        return SMTP_ACT_SENT;
    if (code >= 500)
        return SMTP_ACT_BOUNCE;
    return SMTP_ACT_DEFER;
}

static void reply_status(const struct smtp_reply *r, char *out, size_t size)
{
    /* RFC 3463 3.1: an enhanced status has class 2, 4 or 5 only. A 1xx or
     * 3xx reply where none is due is a protocol error we defer on: 4.5.0. */
    int c = r->code / 100;
    if (c != 2 && c != 4 && c != 5) {
        str_copy(out, "4.5.0", size);
        return;
    }
    /* Without an enhanced code: class.0.0, the class being one digit. */
    char cls[6] = {(char)('0' + c), '.', '0', '.', '0', '\0'};
    str_copy(out, r->status[0] ? r->status : cls, size);
}

/* "host h[ip] said: 550 5.1.1 text (in reply to RCPT TO command)". */
static void outcome_from_reply(struct smtp_client *c, struct smtp_outcome *o, const char *what)
{
    struct buf t;
    buf_init(&t, sizeof(o->text) - 1);
    char status[12];
    reply_status(&c->reply, status, sizeof(status));
    enum smtp_action act = reply_action(c->reply.code);
    if (act == SMTP_ACT_SENT && what == NULL) {
        smtp_reply_oneline(&c->reply, &t);
    } else {
        buf_printf(&t, "host %s[%s] said: ", c->host, c->ip);
        struct buf one;
        buf_init(&one, sizeof(o->text) - 1);
        smtp_reply_oneline(&c->reply, &one);
        buf_append(&t, one.data ? one.data : "", one.len);
        buf_free(&one);
        if (what)
            buf_printf(&t, " (in reply to %s)", what);
    }
    outcome_set(o, act, c->reply.code, status, 0, t.data ? t.data : "");
    buf_reset(&t);
    smtp_reply_oneline(&c->reply, &t);
    str_copy(o->reply, t.data ? t.data : "", sizeof(o->reply));
    buf_free(&t);
    /* The command the reply answered: pipelined replies come in later
     * stages than the command's. */
    if (!what || strcmp(what, "end of DATA command") == 0)
        o->stage = SMTP_ST_DOT;
    else if (strcmp(what, "MAIL FROM command") == 0)
        o->stage = SMTP_ST_MAIL;
    else if (strcmp(what, "RCPT TO command") == 0)
        o->stage = SMTP_ST_RCPT;
    else if (strcmp(what, "DATA command") == 0)
        o->stage = SMTP_ST_DATA;
    else
        o->stage = c->st;
}

/* ---- writing ---------------------------------------------------------- */

/* The stream wrote queued bytes, or failed to. */
static void on_written(void *arg, int status)
{
    struct smtp_client *c = arg;
    if (c->closing)
        return;
    if (status < 0) {
        fail_session(c, SMTP_ACT_DEFER, "4.4.2", ERR_IO, 0,
                     "lost connection with %s[%s] while %s: %s", c->host, c->ip,
                     c->st == SMTP_ST_BODY ? "sending message body" : "sending",
                     uv_strerror(status));
        return;
    }
    if (c->st == SMTP_ST_BODY) {
        /* Progress: RFC 5321 4.5.3.2.5 times each data block. */
        arm_timer(c);
        pump_body(c);
    }
}

/* Write protocol bytes (encrypted once TLS is on). */
static int send_bytes(struct smtp_client *c, const char *p, size_t n)
{
    return tls_stream_write(c->stream, p, n);
}

static bool send_cmd(struct smtp_client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static bool send_cmd(struct smtp_client *c, const char *fmt, ...)
{
    struct buf b;
    buf_init(&b, CMD_MAX);
    va_list ap;
    va_start(ap, fmt);
    int rc = buf_vprintf(&b, fmt, ap);
    va_end(ap);
    if (rc == 0)
        rc = send_bytes(c, b.data, b.len);
    buf_free(&b);
    if (rc != 0) {
        fail_session(c, SMTP_ACT_DEFER, "4.4.2", rc, 0, "lost connection with %s[%s] while %s: %s",
                     c->host, c->ip, "sending a command", err_str(rc));
        return false;
    }
    return true;
}

/* ---- events ------------------------------------------------------------ */

static void emit(struct smtp_client *c, enum smtp_event ev)
{
    if (c->cb)
        c->cb(c, ev, c->arg);
}

/* Finish the message: every recipient has an outcome; the session becomes
 * idle (or closes if it is broken). */
static void finish_msg(struct smtp_client *c)
{
    struct smtp_msg *m = c->msg;
    c->msg = NULL;
    free(c->accepted);
    c->accepted = NULL;
    c->naccepted = 0;
    c->pend_head = c->pend_tail = 0;
    c->nmsgs++;
    if (!c->closing)
        set_state(c, SMTP_ST_IDLE);
    (void)m;
    emit(c, SMTP_EV_DONE);
}

static void on_later(uv_timer_t *t)
{
    struct smtp_client *c = t->data;
    if (c->done_pending) {
        c->done_pending = false;
        finish_msg(c);
    }
}

/* ---- closing ----------------------------------------------------------- */

/* Wipe and free a secret. */
static void free_secret(char *p)
{
    if (p) {
        explicit_bzero(p, strlen(p));
        free(p);
    }
}

static void really_free(struct smtp_client *c)
{
    free_secret(c->auth_user);
    free_secret(c->auth_pass);
    tls_ctx_free(c->tls_ctx);
    smtp_reply_free(&c->reply);
    buf_free(&c->in);
    buf_free(&c->out);
    free(c->chunk);
    free(c->pend);
    free(c->accepted);
    free(c->helo);
    free(c->host);
    free(c->verify_host);
    free(c);
}

static void handle_closed(struct smtp_client *c)
{
    if (--c->open_handles > 0)
        return;
    c->st = SMTP_ST_CLOSED;
    if (c->free_on_close) {
        really_free(c);
        return;
    }
    if (c->msg)
        finish_msg(c);
    emit(c, SMTP_EV_CLOSED);
}

static void on_handle_closed(uv_handle_t *h)
{
    handle_closed(h->data);
}

static void on_stream_closed(void *arg)
{
    handle_closed(arg);
}

static void close_session(struct smtp_client *c)
{
    if (c->closing)
        return;
    c->closing = true;
    c->st = SMTP_ST_CLOSING;
    uv_timer_stop(&c->timer);
    uv_timer_stop(&c->later);
    /* Sends close_notify when TLS is on. */
    tls_stream_close(c->stream);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->later, on_handle_closed);
}

/* Give every recipient still without an outcome the session's outcome. */
static void fill_unfinished(struct smtp_client *c)
{
    struct smtp_msg *m = c->msg;
    if (!m)
        return;
    for (size_t i = 0; i < m->nrcpt; i++)
        if (m->rcpt[i].out.action == SMTP_ACT_NONE)
            m->rcpt[i].out = c->result;
}

static void fail_session(struct smtp_client *c, enum smtp_action act, const char *status, int err,
                         int code, const char *fmt, ...)
{
    if (c->closing)
        return;
    c->fail_stage = c->st;
    char text[sizeof(c->result.text)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    outcome_set(&c->result, act, code, status, err, text);
    c->result.stage = c->st;
    c->result.tls_missing = c->fail_tls_missing;
    c->fail_tls_missing = false;
    str_copy(c->result.reply, c->fail_reply, sizeof(c->result.reply));
    c->fail_reply[0] = '\0';
    log_debug(COMPONENT, "%s: session failed in %s: %s", c->relay, smtp_stage_name(c->st), text);
    bool had_msg = c->msg != NULL;
    fill_unfinished(c);
    close_session(c);
    c->done_pending = false;
    /* Inside smtp_client_send() no event may run: the message is then
     * reported from the close callback, before SMTP_EV_CLOSED. */
    if (had_msg && !c->in_send)
        finish_msg(c);
}

/* The session failed with an outcome built from a reply: keep its text and
 * the reply itself. */
static void fail_session_reply(struct smtp_client *c, const struct smtp_outcome *o)
{
    if (c->closing)
        return;
    str_copy(c->fail_reply, o->reply, sizeof(c->fail_reply));
    fail_session(c, o->action, o->status, ERR_PROTO, o->code, "%s", o->text);
}

/* The session failed because of a reply (greeting, EHLO, RSET ...). */
static void fail_by_reply(struct smtp_client *c, const char *what)
{
    struct smtp_outcome o;
    outcome_from_reply(c, &o, what);
    if (o.action == SMTP_ACT_SENT)
        o.action = SMTP_ACT_DEFER; /* a 2xx where it makes no sense */
    fail_session_reply(c, &o);
}

/* Politely end: QUIT without waiting for a message. */
static void start_quit(struct smtp_client *c)
{
    if (c->closing)
        return;
    if (c->result.action == SMTP_ACT_NONE)
        outcome_set(&c->result, SMTP_ACT_SENT, 0, "2.0.0", 0, "quit");
    set_state(c, SMTP_ST_QUIT);
    if (send_bytes(c, "QUIT\r\n", 6) != 0)
        close_session(c);
}

/* ---- EHLO ---------------------------------------------------------------- */

static bool kw_is(const char *line, size_t n, const char *kw, const char **rest)
{
    size_t k = strlen(kw);
    if (n < k || !view_eq_ci((struct view){line, k}, kw))
        return false;
    if (n > k && line[k] != ' ' && line[k] != '=')
        return false;
    if (rest)
        *rest = n > k ? line + k + 1 : line + n;
    return true;
}

/* The mechanisms of "AUTH PLAIN LOGIN ..." (RFC 4954 3), also the old
 * "AUTH=PLAIN LOGIN" form some servers still send. */
static void parse_auth(struct smtp_client *c, const char *p, size_t n)
{
    c->ext.auth = true;
    size_t i = 0;
    while (i < n) {
        while (i < n && p[i] == ' ')
            i++;
        size_t j = i;
        while (j < n && p[j] != ' ')
            j++;
        struct view w = {p + i, j - i};
        if (view_eq_ci(w, "PLAIN"))
            c->ext.auth_plain = true;
        else if (view_eq_ci(w, "LOGIN"))
            c->ext.auth_login = true;
        i = j;
    }
}

static void parse_ehlo(struct smtp_client *c)
{
    memset(&c->ext, 0, sizeof(c->ext));
    c->ext.esmtp = true;
    const char *p = c->reply.text.data ? c->reply.text.data : "";
    const char *end = p + c->reply.text.len;
    bool first = true;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        const char *rest;
        if (!first) {
            if (kw_is(p, n, "PIPELINING", NULL))
                c->ext.pipelining = true;
            else if (kw_is(p, n, "STARTTLS", NULL))
                c->ext.starttls = true;
            else if (kw_is(p, n, "SMTPUTF8", NULL))
                c->ext.smtputf8 = true;
            else if (kw_is(p, n, "8BITMIME", NULL))
                c->ext.eightbitmime = true;
            else if (kw_is(p, n, "DSN", NULL))
                c->ext.dsn = true;
            else if (kw_is(p, n, "ENHANCEDSTATUSCODES", NULL))
                c->ext.enhanced = true;
            else if (kw_is(p, n, "CHUNKING", NULL))
                c->ext.chunking = true;
            else if (kw_is(p, n, "AUTH", &rest))
                parse_auth(c, rest, (size_t)(p + n - rest));
            else if (kw_is(p, n, "SIZE", &rest)) {
                /* RFC 1870 4: "SIZE" [SP number]; 0 or absent = no limit. */
                uint64_t v = 0;
                char num[24];
                size_t rl = (size_t)(p + n - rest);
                if (rl > 0 && rl < sizeof(num)) {
                    memcpy(num, rest, rl);
                    num[rl] = '\0';
                    if (str_to_u64(num, &v) == 0)
                        c->ext.size = v;
                }
            }
        }
        first = false;
        p += n + (nl ? 1 : 0);
    }
}

static void send_ehlo(struct smtp_client *c)
{
    set_state(c, SMTP_ST_EHLO);
    send_cmd(c, "EHLO %s\r\n", c->helo);
}

/* Must this session have TLS before any MAIL (verify or encrypt)? */
static bool tls_required(const struct smtp_client *c)
{
    return c->tlsmode == SMTP_TLS_VERIFY || c->tlsmode == SMTP_TLS_ENCRYPT;
}

static bool start_auth(struct smtp_client *c);

/* After EHLO/HELO: STARTTLS when wanted and possible, else ready. */
static void after_hello(struct smtp_client *c)
{
    c->established = true;
    if (!c->tls_on && c->tlsmode != SMTP_TLS_NONE) {
        if (c->ext.starttls && c->tls_ctx && !c->starttls_sent) {
            c->starttls_sent = true;
            set_state(c, SMTP_ST_STARTTLS);
            send_cmd(c, "STARTTLS\r\n");
            return;
        }
        if (tls_required(c)) {
            /* RFC 8461 4.2 and Postfix's wording for a required TLS. */
            c->fail_tls_missing = true;
            fail_session(c, SMTP_ACT_DEFER, "4.7.4", ERR_TLS, 0,
                         c->tls_ctx ? "TLS is required, but was not offered by host %s[%s]"
                                    : "TLS is required, but no TLS context is available for "
                                      "host %s[%s]",
                         c->host, c->ip);
            return;
        }
    }
    if (start_auth(c))
        return;
    set_state(c, SMTP_ST_IDLE);
    emit(c, SMTP_EV_READY);
}

/* ---- AUTH (RFC 4954) ------------------------------------------------------ */

/* Send a command that carries a secret: built in a buffer that is wiped
 * afterwards, and never logged. */
static void send_secret(struct smtp_client *c, const char *prefix, const unsigned char *data,
                        size_t n)
{
    struct buf b;
    buf_init(&b, 8192);
    int rc = buf_append_str(&b, prefix);
    if (rc == 0)
        rc = base64_encode(data, n, &b);
    if (rc == 0)
        rc = buf_append(&b, "\r\n", 2);
    if (rc == 0)
        rc = send_bytes(c, b.data, b.len);
    if (b.data)
        explicit_bzero(b.data, b.len);
    buf_free(&b);
    if (rc != 0)
        fail_session(c, SMTP_ACT_DEFER, "4.4.2", rc, 0, "lost connection with %s[%s] while %s",
                     c->host, c->ip, "sending AUTH");
}

/* After EHLO (and TLS): log in when the caller gave credentials and the
 * server takes AUTH. true when the AUTH stage started (or failed the
 * session); false to go on without AUTH. */
static bool start_auth(struct smtp_client *c)
{
    if (!c->auth_user || c->authenticated)
        return false;
    /* Never the password in clear where TLS is required: checked before
     * anything else, whatever the server announces. */
    if (c->auth_tls_required && !c->tls_on) {
        set_state(c, SMTP_ST_AUTH);
        fail_session(c, SMTP_ACT_DEFER, "4.7.0", ERR_PERM, 0,
                     "SASL authentication to %s[%s] needs TLS, which %s; credentials not sent",
                     c->host, c->ip,
                     !c->ext.starttls ? "the server did not offer (no STARTTLS)"
                     : !c->tls_ctx    ? "is not available here (no TLS context)"
                                      : "was not established");
        return true;
    }
    if (!c->ext.auth) {
        log_info(COMPONENT, "%s offers no AUTH: sending without authentication", c->relay);
        return false;
    }
    set_state(c, SMTP_ST_AUTH);
    if (c->ext.auth_plain) {
        /* RFC 4616 2: authzid (empty) NUL authcid NUL passwd, sent as the
         * initial response (RFC 4954 4). */
        size_t ul = strlen(c->auth_user), pl = strlen(c->auth_pass);
        unsigned char *msg = malloc(ul + pl + 2);
        if (!msg) {
            fail_session(c, SMTP_ACT_DEFER, "4.3.0", ERR_NOMEM, 0, "out of memory");
            return true;
        }
        msg[0] = '\0';
        memcpy(msg + 1, c->auth_user, ul);
        msg[1 + ul] = '\0';
        memcpy(msg + 2 + ul, c->auth_pass, pl);
        send_secret(c, "AUTH PLAIN ", msg, ul + pl + 2);
        explicit_bzero(msg, ul + pl + 2);
        free(msg);
        return true;
    }
    if (c->ext.auth_login) {
        c->auth_login_step = false;
        send_cmd(c, "AUTH LOGIN\r\n");
        return true;
    }
    fail_session(c, SMTP_ACT_DEFER, "4.7.0", ERR_PERM, 0,
                 "SASL authentication to %s[%s] failed: no mechanism in common (PLAIN, LOGIN)",
                 c->host, c->ip);
    return true;
}

/* A reply in the AUTH stage. */
static void on_auth_reply(struct smtp_client *c)
{
    int code = c->reply.code;
    if (code == 235) {
        c->authenticated = true;
        log_info(COMPONENT, "%s: SASL authentication succeeded", c->relay);
        set_state(c, SMTP_ST_IDLE);
        emit(c, SMTP_EV_READY);
        return;
    }
    if (code == 334 && c->ext.auth_login && !c->ext.auth_plain) {
        /* LOGIN: the first 334 asks for the user name, the second for the
         * password (the prompts' texts are not standard: go by order). */
        const char *secret = c->auth_login_step ? c->auth_pass : c->auth_user;
        c->auth_login_step = true;
        send_secret(c, "", (const unsigned char *)secret, strlen(secret));
        return;
    }
    /* RFC 4954 6: 535 credentials invalid, 534 mechanism too weak, 538
     * encryption required, 454 temporary failure, ... Postfix defers on
     * every AUTH failure; the verdict decides (stage SMTP_ST_AUTH). */
    struct smtp_outcome o;
    outcome_from_reply(c, &o, "AUTH command");
    if (o.action == SMTP_ACT_SENT)
        o.action = SMTP_ACT_DEFER;
    if (code == 334)
        str_copy(o.status, "4.5.0", sizeof(o.status)); /* a challenge we did not expect */
    char text[sizeof(o.text)];
    snprintf(text, sizeof(text), "SASL authentication failed; server %s[%s] said: %s", c->host,
             c->ip, o.reply);
    str_copy(o.text, text, sizeof(o.text));
    if (code == 334 && !c->closing) {
        /* Cancel the exchange (RFC 4954 4: "*") before leaving. */
        send_bytes(c, "*\r\n", 3);
    }
    fail_session_reply(c, &o);
}

/* ---- TLS ---------------------------------------------------------------- */

static void process_input(struct smtp_client *c);
static int take_plain(struct smtp_client *c, const char *p, size_t n);

static void on_read(void *arg, const void *data, size_t n)
{
    struct smtp_client *c = arg;
    if (c->closing)
        return;
    if (take_plain(c, data, n) == 0)
        process_input(c);
}

static void on_handshake(void *arg, int status, const struct tls_facts *facts)
{
    struct smtp_client *c = arg;
    c->facts = *facts;
    c->tls_tried = true;
    if (c->closing)
        return;
    if (status != 0) {
        /* RFC 3463 4.7.5: cryptographic failure, for a certificate that did
         * not verify and for a handshake that did not complete alike. */
        bool cert = c->tlsmode == SMTP_TLS_VERIFY && facts->failure != TLS_FAIL_HANDSHAKE &&
                    facts->failure != TLS_FAIL_NONE;
        fail_session(c, SMTP_ACT_DEFER, "4.7.5", ERR_TLS, 0,
                     cert ? "Server certificate not verified: %s[%s]: %s"
                          : "TLS handshake with %s[%s] failed: %s",
                     c->host, c->ip, facts->text[0] ? facts->text : "handshake failed");
        return;
    }
    c->tls_on = true;
    log_info(COMPONENT, "%s TLS connection established to %s: %s with cipher %s%s%s",
             facts->verified ? "Verified" : (facts->chain_ok ? "Trusted" : "Untrusted"), c->relay,
             facts->version, facts->cipher, facts->group[0] ? " key-exchange " : "", facts->group);
    if (c->tls_check) {
        struct smtp_outcome o;
        memset(&o, 0, sizeof(o));
        if (!c->tls_check(c, facts, &o, c->arg)) {
            if (o.action == SMTP_ACT_NONE || o.action == SMTP_ACT_SENT)
                o.action = SMTP_ACT_DEFER;
            fail_session(c, o.action, o.status[0] ? o.status : "4.7.5", ERR_TLS, o.code, "%s",
                         o.text[0] ? o.text : "TLS rejected by policy");
            return;
        }
    }
    /* RFC 3207 4.2: forget everything learned before TLS; EHLO again. */
    memset(&c->ext, 0, sizeof(c->ext));
    send_ehlo(c);
}

static const char *lost_while(const struct smtp_client *c);

/* The input ended: the transport (status ERR_CLOSED), or the TLS session
 * (close_notify or a fatal alert). */
static void on_end(void *arg, int status, int uv_status)
{
    struct smtp_client *c = arg;
    (void)uv_status;
    if (c->closing)
        return;
    if (c->st == SMTP_ST_QUIT) {
        close_session(c);
        return;
    }
    if (status == ERR_CLOSED) {
        fail_session(c, SMTP_ACT_DEFER, "4.4.2", ERR_IO, 0, "lost connection with %s[%s] while %s",
                     c->host, c->ip, lost_while(c));
        return;
    }
    fail_session(c, SMTP_ACT_DEFER, "4.4.2", ERR_TLS, 0,
                 "lost connection with %s[%s] while %s (TLS session ended)", c->host, c->ip,
                 smtp_stage_name(c->st));
}

static void start_tls(struct smtp_client *c)
{
    /* RFC 3207 5: the server's 220 must be the last plaintext it sends. */
    if (c->in.len > 0) {
        /* Reported as a TLS failure: opportunistic callers may retry the
         * host in plaintext, as after a failed handshake. */
        c->tls_tried = true;
        fail_session(c, SMTP_ACT_DEFER, "4.7.5", ERR_TLS, 0,
                     "TLS handshake with %s[%s] failed: plaintext after the STARTTLS reply",
                     c->host, c->ip);
        return;
    }
    enum tls_verify v = c->tlsmode == SMTP_TLS_VERIFY ? TLS_VERIFY_HOST : TLS_VERIFY_NONE;
    c->tls_started = true;
    int rc =
        tls_stream_start_tls(c->stream, c->tls_ctx, c->verify_host ? c->verify_host : c->host, v);
    if (rc == ERR_NOMEM) {
        fail_session(c, SMTP_ACT_DEFER, "4.3.0", ERR_NOMEM, 0,
                     "cannot start TLS with %s[%s]: out of memory", c->host, c->ip);
        return;
    }
    set_state(c, SMTP_ST_TLS);
    c->tls_tried = true;
    if (rc != 0)
        fail_session(c, SMTP_ACT_DEFER, "4.4.2", ERR_IO, 0,
                     "lost connection with %s[%s] while starting TLS", c->host, c->ip);
}

/* ---- the transaction ------------------------------------------------------ */

static bool pend_push(struct smtp_client *c, enum pend_kind k, size_t idx)
{
    /* Capacity: MAIL + every RCPT + DATA + the empty dot, set in send(). */
    c->pend[c->pend_tail].kind = k;
    c->pend[c->pend_tail].idx = idx;
    c->pend_tail++;
    return true;
}

static bool addr_ok(const char *a)
{
    size_t n = strlen(a);
    if (n + 2 > PATH_MAX_OCTETS)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)a[i];
        if (ch < 0x20 || ch == 0x7f || ch == '<' || ch == '>')
            return false;
    }
    return true;
}

static bool param_ok(const char *p)
{
    if (!p)
        return true;
    for (; *p; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
            return false;
    return true;
}

static int fmt_rcpt(struct smtp_client *c, struct buf *b, size_t i)
{
    const struct smtp_rcpt *r = &c->msg->rcpt[i];
    int rc = buf_printf(b, "RCPT TO:<%s>", r->addr);
    if (rc == 0 && c->ext.dsn && r->notify && param_ok(r->notify))
        rc = buf_printf(b, " NOTIFY=%s", r->notify);
    if (rc == 0 && c->ext.dsn && r->orcpt && param_ok(r->orcpt))
        rc = buf_printf(b, " ORCPT=%s", r->orcpt);
    if (rc == 0)
        rc = buf_append(b, "\r\n", 2);
    return rc;
}

/* The first recipient after from that has no outcome yet. */
static size_t next_open_rcpt(const struct smtp_client *c, size_t from)
{
    while (from < c->msg->nrcpt && c->msg->rcpt[from].out.action != SMTP_ACT_NONE)
        from++;
    return from;
}

static void start_mail(struct smtp_client *c)
{
    struct smtp_msg *m = c->msg;
    struct buf b;
    buf_init(&b, CMD_MAX);
    int rc = buf_printf(&b, "MAIL FROM:<%s>", m->sender);
    if (rc == 0 && c->ext.size)
        rc = buf_printf(&b, " SIZE=%llu", (unsigned long long)msg_size(m));
    if (rc == 0 && m->eightbit && c->ext.eightbitmime)
        rc = buf_append_str(&b, " BODY=8BITMIME");
    if (rc == 0 && m->smtputf8)
        rc = buf_append_str(&b, " SMTPUTF8");
    if (rc == 0 && c->ext.dsn && m->ret && param_ok(m->ret))
        rc = buf_printf(&b, " RET=%s", m->ret);
    if (rc == 0 && c->ext.dsn && m->envid && param_ok(m->envid))
        rc = buf_printf(&b, " ENVID=%s", m->envid);
    if (rc == 0)
        rc = buf_append(&b, "\r\n", 2);
    pend_push(c, P_MAIL, 0);
    c->next_rcpt = next_open_rcpt(c, 0);
    if (rc == 0 && c->ext.pipelining) {
        /* RFC 2920 3.1: MAIL, RCPT and DATA may go in one group; DATA is
         * the last command of the group. */
        for (size_t i = c->next_rcpt; rc == 0 && i < m->nrcpt; i = next_open_rcpt(c, i + 1)) {
            rc = fmt_rcpt(c, &b, i);
            pend_push(c, P_RCPT, i);
        }
        if (rc == 0)
            rc = buf_append(&b, "DATA\r\n", 6);
        pend_push(c, P_DATA, 0);
        c->next_rcpt = m->nrcpt;
    }
    m->attempted = true;
    c->need_rset = true;
    set_state(c, SMTP_ST_MAIL);
    if (rc == 0)
        rc = send_bytes(c, b.data, b.len);
    buf_free(&b);
    if (rc != 0)
        fail_session(c, SMTP_ACT_DEFER, "4.4.2", rc, 0, "lost connection with %s[%s] while %s",
                     c->host, c->ip, "sending MAIL FROM");
}

/* Without PIPELINING: send the next RCPT, or DATA, or end the message. */
static void next_step(struct smtp_client *c)
{
    struct smtp_msg *m = c->msg;
    if (c->next_rcpt < m->nrcpt) {
        size_t i = c->next_rcpt;
        c->next_rcpt = next_open_rcpt(c, i + 1);
        struct buf b;
        buf_init(&b, CMD_MAX);
        int rc = fmt_rcpt(c, &b, i);
        pend_push(c, P_RCPT, i);
        set_state(c, SMTP_ST_RCPT);
        if (rc == 0)
            rc = send_bytes(c, b.data, b.len);
        buf_free(&b);
        if (rc != 0)
            fail_session(c, SMTP_ACT_DEFER, "4.4.2", rc, 0,
                         "lost connection with %s[%s] while sending RCPT TO", c->host, c->ip);
        return;
    }
    if (c->naccepted == 0) {
        finish_msg(c);
        return;
    }
    pend_push(c, P_DATA, 0);
    set_state(c, SMTP_ST_DATA);
    send_cmd(c, "DATA\r\n");
}

static void start_body(struct smtp_client *c)
{
    smtp_stuff_init(&c->stuff);
    c->body_off = 0;
    c->body_end_sent = false;
    c->msg->wire_bytes = 0;
    set_state(c, SMTP_ST_BODY);
    pump_body(c);
}

/* Encode and write body chunks while little is in flight; after the last,
 * the end-of-data dot. */
static void pump_body(struct smtp_client *c)
{
    struct smtp_msg *m = c->msg;
    uint64_t total = msg_size(m);
    while (!c->closing && c->st == SMTP_ST_BODY && !c->body_end_sent &&
           tls_stream_queued(c->stream) < BODY_INFLIGHT_MAX) {
        buf_reset(&c->out);
        uint64_t left = total - c->body_off;
        size_t n = left > BODY_CHUNK ? BODY_CHUNK : (size_t)left;
        const char *src = m->body.ptr ? m->body.ptr + c->body_off : "";
        if (m->read && n > 0) {
            /* Content from the owner's reader: a short or failed read must
             * not end the message with a dot (the next hop would take a
             * truncated message): drop the connection instead. */
            size_t got = 0;
            int rr = m->read(m->read_arg, c->body_off, c->chunk, n, &got);
            if (rr != 0 || got == 0) {
                fail_session(c, SMTP_ACT_DEFER, "4.3.0", rr ? rr : ERR_IO, 0,
                             "cannot read the message content: %s", err_str(rr ? rr : ERR_IO));
                return;
            }
            n = got;
            src = c->chunk;
        }
        int rc = smtp_stuff_feed(&c->stuff, src, n, &c->out);
        c->body_off += n;
        bool last = c->body_off >= total;
        if (rc == 0 && last)
            rc = smtp_stuff_finish(&c->stuff, &c->out);
        if (rc == 0)
            rc = send_bytes(c, c->out.data, c->out.len);
        if (rc != 0) {
            fail_session(c, SMTP_ACT_DEFER, "4.4.2", rc, 0,
                         "lost connection with %s[%s] while sending message body", c->host, c->ip);
            return;
        }
        m->wire_bytes += c->out.len;
        if (last) {
            c->body_end_sent = true;
            /* RFC 5321 4.5.3.2.6: the end-of-data timer starts now. */
            set_state(c, SMTP_ST_DOT);
        }
    }
}

/* A reply to one of the pending transaction commands. */
static void on_txn_reply(struct smtp_client *c)
{
    if (c->pend_head == c->pend_tail) {
        /* A reply nobody asked for (e.g. 421 on an idle session). */
        fail_by_reply(c, NULL);
        return;
    }
    struct pend p = c->pend[c->pend_head++];
    struct smtp_msg *m = c->msg;
    int cls = c->reply.code / 100;
    switch (p.kind) {
    case P_MAIL:
        if (cls == 2) {
            c->mail_ok = true;
        } else {
            c->mail_failed = true;
            for (size_t i = 0; i < m->nrcpt; i++)
                if (m->rcpt[i].out.action == SMTP_ACT_NONE)
                    outcome_from_reply(c, &m->rcpt[i].out, "MAIL FROM command");
        }
        if (!c->ext.pipelining) {
            if (c->mail_failed) {
                finish_msg(c);
                return;
            }
            next_step(c);
            return;
        }
        break;
    case P_RCPT:
        if (!c->mail_failed && m->rcpt[p.idx].out.action == SMTP_ACT_NONE) {
            if (cls == 2) {
                c->accepted[p.idx] = true;
                c->naccepted++;
            } else {
                outcome_from_reply(c, &m->rcpt[p.idx].out, "RCPT TO command");
            }
        }
        if (!c->ext.pipelining) {
            next_step(c);
            return;
        }
        break;
    case P_DATA:
        if (c->reply.code == 354) {
            if (c->naccepted > 0 && c->mail_ok) {
                start_body(c);
                return;
            }
            /* RFC 2920 3.1: DATA was accepted although no RCPT was: send an
             * empty message end and ignore its reply. */
            pend_push(c, P_DOT_EMPTY, 0);
            set_state(c, SMTP_ST_DOT);
            send_cmd(c, ".\r\n");
            return;
        }
        for (size_t i = 0; i < m->nrcpt; i++)
            if (c->accepted[i] && m->rcpt[i].out.action == SMTP_ACT_NONE) {
                outcome_from_reply(c, &m->rcpt[i].out, "DATA command");
                if (m->rcpt[i].out.action == SMTP_ACT_SENT) {
                    /* 2xx instead of 354: nothing was sent, so a protocol
                     * error to defer on, not a 2.X.X success code. */
                    m->rcpt[i].out.action = SMTP_ACT_DEFER;
                    str_copy(m->rcpt[i].out.status, "4.5.0", sizeof(m->rcpt[i].out.status));
                }
            }
        break;
    case P_DOT_EMPTY:
        break;
    }
    if (c->pend_head == c->pend_tail && !c->closing && c->st != SMTP_ST_BODY)
        finish_msg(c);
}

/* The final reply after the dot: it decides every accepted recipient. */
static void on_dot_reply(struct smtp_client *c)
{
    struct smtp_msg *m = c->msg;
    /* RFC 5321 4.1.1.4: the end of mail data completes the transaction and
     * clears the server's buffers, so the next message needs no RSET. Only
     * an aborted transaction (MAIL or every RCPT refused, DATA refused, an
     * empty end after a 354 nobody asked for) leaves need_rset set. Kept
     * for a non-2xx end reply too: one round trip, and some servers keep
     * state after a refused message. */
    if (c->reply.code / 100 == 2)
        c->need_rset = false;
    for (size_t i = 0; i < m->nrcpt; i++)
        if (c->accepted[i] && m->rcpt[i].out.action == SMTP_ACT_NONE)
            outcome_from_reply(
                c, &m->rcpt[i].out,
                reply_action(c->reply.code) == SMTP_ACT_SENT ? NULL : "end of DATA command");
    finish_msg(c);
}

/* ---- replies by state ------------------------------------------------------ */

static void on_reply(struct smtp_client *c)
{
    int cls = c->reply.code / 100;
    switch (c->st) {
    case SMTP_ST_GREETING:
        if (cls == 2) {
            struct buf one;
            buf_init(&one, sizeof(c->greeting) - 1);
            smtp_reply_oneline(&c->reply, &one);
            str_copy(c->greeting, one.data ? one.data : "", sizeof(c->greeting));
            buf_free(&one);
            send_ehlo(c);
        } else {
            char status[12];
            struct buf one;
            buf_init(&one, 512);
            smtp_reply_oneline(&c->reply, &one);
            reply_status(&c->reply, status, sizeof(status));
            str_copy(c->fail_reply, one.data ? one.data : "", sizeof(c->fail_reply));
            fail_session(c, cls == 5 ? SMTP_ACT_BOUNCE : SMTP_ACT_DEFER, status, ERR_PROTO,
                         c->reply.code, "host %s[%s] refused to talk to me: %s", c->host, c->ip,
                         one.data ? one.data : "");
            buf_free(&one);
        }
        break;
    case SMTP_ST_EHLO:
        if (cls == 2) {
            parse_ehlo(c);
            after_hello(c);
        } else if (cls == 5 && !c->tried_helo && !c->tls_on) {
            /* RFC 5321 3.2: fall back to HELO for servers without ESMTP. */
            c->tried_helo = true;
            set_state(c, SMTP_ST_HELO);
            send_cmd(c, "HELO %s\r\n", c->helo);
        } else {
            fail_by_reply(c, "EHLO command");
        }
        break;
    case SMTP_ST_HELO:
        if (cls == 2) {
            memset(&c->ext, 0, sizeof(c->ext));
            after_hello(c);
        } else {
            fail_by_reply(c, "HELO command");
        }
        break;
    case SMTP_ST_STARTTLS:
        if (c->reply.code == 220) {
            start_tls(c);
        } else if (tls_required(c)) {
            struct smtp_outcome o;
            outcome_from_reply(c, &o, "STARTTLS command");
            str_copy(c->fail_reply, o.reply, sizeof(c->fail_reply));
            c->fail_tls_missing = true;
            fail_session(c, SMTP_ACT_DEFER, "4.7.4", ERR_TLS, o.code,
                         "TLS is required, but host %s[%s] refused to start TLS: %s", c->host,
                         c->ip, o.text);
        } else {
            /* Opportunistic: go on in plaintext (AUTH decides whether its
             * credentials may go without TLS). */
            if (start_auth(c))
                break;
            set_state(c, SMTP_ST_IDLE);
            emit(c, SMTP_EV_READY);
        }
        break;
    case SMTP_ST_AUTH:
        on_auth_reply(c);
        break;
    case SMTP_ST_RSET:
        if (cls == 2) {
            c->need_rset = false;
            start_mail(c);
        } else {
            /* The message was not attempted; the caller may use another
             * session for it. */
            fail_by_reply(c, "RSET command");
        }
        break;
    case SMTP_ST_MAIL:
    case SMTP_ST_RCPT:
    case SMTP_ST_DATA:
        on_txn_reply(c);
        break;
    case SMTP_ST_DOT:
        if (c->pend_head < c->pend_tail && c->pend[c->pend_head].kind == P_DOT_EMPTY) {
            c->pend_head++;
            finish_msg(c);
        } else {
            on_dot_reply(c);
        }
        break;
    case SMTP_ST_BODY:
        /* A reply in the middle of the body: the server gave up on this
         * message. It decides the accepted recipients (never as sent), and
         * the session cannot be trusted with another message. */
        c->broken = true;
        for (size_t i = 0; i < c->msg->nrcpt; i++)
            if (c->accepted[i] && c->msg->rcpt[i].out.action == SMTP_ACT_NONE) {
                outcome_from_reply(c, &c->msg->rcpt[i].out, "message body");
                if (c->msg->rcpt[i].out.action == SMTP_ACT_SENT)
                    c->msg->rcpt[i].out.action = SMTP_ACT_DEFER;
            }
        fail_by_reply(c, "message body");
        break;
    case SMTP_ST_QUIT:
        close_session(c);
        break;
    case SMTP_ST_IDLE:
        /* Typically "421 idle timeout": the server is leaving. */
        fail_by_reply(c, NULL);
        break;
    default:
        break;
    }
}

/* ---- reading --------------------------------------------------------------- */

static int take_plain(struct smtp_client *c, const char *p, size_t n)
{
    if (buf_append(&c->in, p, n) != 0) {
        fail_session(c, SMTP_ACT_DEFER, "4.5.0", ERR_TOOBIG, 0,
                     "host %s[%s] sent a line longer than %d octets", c->host, c->ip,
                     SMTP_REPLY_LINE_MAX);
        return ERR_TOOBIG;
    }
    return 0;
}

/* Split buffered input into lines and feed the reply parser. */
static void process_input(struct smtp_client *c)
{
    while (!c->closing && c->in.len > 0) {
        char *nl = memchr(c->in.data, '\n', c->in.len);
        if (!nl) {
            if (c->in.len > SMTP_REPLY_LINE_MAX)
                fail_session(c, SMTP_ACT_DEFER, "4.5.0", ERR_TOOBIG, 0,
                             "host %s[%s] sent a line longer than %d octets", c->host, c->ip,
                             SMTP_REPLY_LINE_MAX);
            return;
        }
        size_t n = (size_t)(nl - c->in.data);
        size_t used = n + 1;
        if (n > 0 && c->in.data[n - 1] == '\r')
            n--;
        int rc = smtp_reply_feed(&c->reply, c->in.data, n);
        buf_consume(&c->in, used);
        if (rc < 0) {
            fail_session(c, SMTP_ACT_DEFER, "4.5.0", ERR_PROTO, 0,
                         "host %s[%s] sent a malformed reply while in state %s", c->host, c->ip,
                         smtp_stage_name(c->st));
            return;
        }
        if (rc == 0) {
            bool had_tls = c->tls_started;
            on_reply(c);
            smtp_reply_reset(&c->reply);
            if (!had_tls && c->tls_started)
                return; /* TLS started: start_tls() judged what was left */
        }
    }
}

static const char *lost_while(const struct smtp_client *c)
{
    switch (c->st) {
    case SMTP_ST_GREETING:
        return "receiving the initial server greeting";
    case SMTP_ST_EHLO:
    case SMTP_ST_HELO:
        return "performing the EHLO handshake";
    case SMTP_ST_AUTH:
        return "performing SASL authentication";
    case SMTP_ST_STARTTLS:
    case SMTP_ST_TLS:
        return "performing the TLS handshake";
    case SMTP_ST_RSET:
        return "sending RSET";
    case SMTP_ST_MAIL:
        return "sending MAIL FROM";
    case SMTP_ST_RCPT:
        return "sending RCPT TO";
    case SMTP_ST_DATA:
        return "sending DATA command";
    case SMTP_ST_BODY:
        return "sending message body";
    case SMTP_ST_DOT:
        return "sending end of data -- message may be sent more than once";
    case SMTP_ST_QUIT:
        return "sending QUIT";
    default:
        return "idle";
    }
}

static void on_timeout(uv_timer_t *t)
{
    struct smtp_client *c = t->data;
    if (c->closing)
        return;
    if (c->st == SMTP_ST_QUIT) {
        close_session(c);
        return;
    }
    if (c->st == SMTP_ST_CONNECT) {
        fail_session(c, SMTP_ACT_DEFER, "4.4.1", ERR_TIMEOUT, 0,
                     "connect to %s[%s]:%u: Connection timed out", c->host, c->ip, c->port);
        return;
    }
    fail_session(c, SMTP_ACT_DEFER, "4.4.2", ERR_TIMEOUT, 0,
                 "conversation with %s[%s] timed out while %s", c->host, c->ip, lost_while(c));
}

static void on_connect(void *arg, int status)
{
    struct smtp_client *c = arg;
    if (c->closing)
        return;
    if (status < 0) {
        fail_session(c, SMTP_ACT_DEFER, "4.4.1", ERR_IO, 0, "connect to %s[%s]:%u: %s", c->host,
                     c->ip, c->port, uv_strerror(status));
        return;
    }
    uv_tcp_nodelay(tls_stream_tcp(c->stream), 1);
    struct sockaddr_storage local;
    int local_len = sizeof(local);
    if (uv_tcp_getsockname(tls_stream_tcp(c->stream), (struct sockaddr *)&local, &local_len) == 0) {
        if (local.ss_family == AF_INET)
            uv_ip4_name((const struct sockaddr_in *)&local, c->local_ip, sizeof(c->local_ip));
        else if (local.ss_family == AF_INET6)
            uv_ip6_name((const struct sockaddr_in6 *)&local, c->local_ip, sizeof(c->local_ip));
    }
    set_state(c, SMTP_ST_GREETING);
    int rc = tls_stream_read_start(c->stream);
    if (rc < 0)
        fail_session(c, SMTP_ACT_DEFER, "4.4.2", ERR_IO, 0, "cannot read from %s[%s]: %s", c->host,
                     c->ip, uv_strerror(rc));
}

/* ---- public ---------------------------------------------------------------- */

struct smtp_client *smtp_client_new(uv_loop_t *loop, const struct smtp_client_opts *o, int *err)
{
    int dummy;
    if (!err)
        err = &dummy;
    *err = ERR_INVAL;
    if (!loop || !o || !o->helo_name || !o->host || !o->addr || !o->cb)
        return NULL;
    if (o->addr->sa_family != AF_INET && o->addr->sa_family != AF_INET6)
        return NULL;
    *err = ERR_NOMEM;
    struct smtp_client *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->loop = loop;
    c->helo = dup_str(o->helo_name);
    c->host = dup_str(o->host);
    c->verify_host = dup_str(o->verify_host);
    static const struct tls_stream_callbacks stream_cbs = {
        .on_connect = on_connect,
        .on_read = on_read,
        .on_handshake = on_handshake,
        .on_end = on_end,
        .on_written = on_written,
        .on_close = on_stream_closed,
    };
    /* Bounds the queue: a command (CMD_MAX) on top of the body in flight. */
    const struct tls_stream_opts sopts = {.write_max =
                                              CMD_MAX + BODY_INFLIGHT_MAX + 2 * BODY_CHUNK};
    bool auth_ok = true;
    if (o->auth_user && *o->auth_user) {
        c->auth_user = dup_str(o->auth_user);
        c->auth_pass = dup_str(o->auth_password ? o->auth_password : "");
        c->auth_tls_required = o->auth_tls_required;
        auth_ok = c->auth_user && c->auth_pass;
    }
    if (c->helo && c->host && (!o->verify_host || c->verify_host) && auth_ok)
        c->stream = tls_stream_new(loop, &stream_cbs, c, &sopts);
    if (!c->stream) {
        free_secret(c->auth_user);
        free_secret(c->auth_pass);
        free(c->helo);
        free(c->host);
        free(c->verify_host);
        free(c);
        return NULL;
    }
    size_t alen =
        o->addr->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    memcpy(&c->addr, o->addr, alen);
    unsigned port;
    if (o->addr->sa_family == AF_INET) {
        uv_ip4_name((const struct sockaddr_in *)o->addr, c->ip, sizeof(c->ip));
        port = ntohs(((const struct sockaddr_in *)o->addr)->sin_port);
    } else {
        uv_ip6_name((const struct sockaddr_in6 *)o->addr, c->ip, sizeof(c->ip));
        port = ntohs(((const struct sockaddr_in6 *)o->addr)->sin6_port);
    }
    c->port = port;
    snprintf(c->relay, sizeof(c->relay), "%s[%s]:%u", c->host, c->ip, port);
    c->tlsmode = o->tls;
    c->tls_ctx = o->tls_ctx ? tls_ctx_ref(o->tls_ctx) : NULL;
    c->tls_check = o->tls_check;
    c->to = o->timeouts;
    c->cb = o->cb;
    c->arg = o->arg;
    buf_init(&c->in, IN_MAX + TLS_STREAM_READ_CHUNK);
    buf_init(&c->out, 2 * BODY_CHUNK + 16);
    smtp_reply_init(&c->reply);
    c->st = SMTP_ST_CONNECT;

    uv_timer_init(loop, &c->timer);
    uv_timer_init(loop, &c->later);
    c->timer.data = c;
    c->later.data = c;
    c->open_handles = 3;
    arm_timer(c);
    int rc = tls_stream_connect(c->stream, (const struct sockaddr *)&c->addr);
    if (rc < 0) {
        /* Reported through events, as every other failure. */
        fail_session(c, SMTP_ACT_DEFER, "4.4.1", ERR_IO, 0, "connect to %s[%s]:%u: %s", c->host,
                     c->ip, port, uv_strerror(rc));
    }
    *err = 0;
    return c;
}

int smtp_client_send(struct smtp_client *c, struct smtp_msg *m)
{
    if (!c || !m || c->closing || c->st != SMTP_ST_IDLE || c->msg || c->broken || m->nrcpt == 0 ||
        !m->sender || !m->rcpt)
        return ERR_INVAL;
    if (m->read && !c->chunk && !(c->chunk = malloc(BODY_CHUNK)))
        return ERR_NOMEM;
    size_t need = m->nrcpt + 4;
    struct pend *np = realloc(c->pend, need * sizeof(*np));
    bool *acc = calloc(m->nrcpt, sizeof(*acc));
    if (!np || !acc) {
        if (np)
            c->pend = np;
        free(acc);
        return ERR_NOMEM;
    }
    c->pend = np;
    c->accepted = acc;
    c->naccepted = 0;
    c->pend_head = c->pend_tail = 0;
    c->mail_ok = c->mail_failed = false;
    c->msg = m;
    m->attempted = false;
    m->wire_bytes = 0;
    for (size_t i = 0; i < m->nrcpt; i++)
        memset(&m->rcpt[i].out, 0, sizeof(m->rcpt[i].out));

    /* Reasons that end the message before any command: decided here, reported
     * from the loop (never inside this call). */
    char text[512];
    const char *status = NULL;
    if (!addr_ok(m->sender)) {
        status = "5.1.7";
        snprintf(text, sizeof(text), "bad sender address syntax");
    } else if (m->smtputf8 && !c->ext.smtputf8) {
        /* RFC 6531 3.4: no downgrade; the message cannot go to this host. */
        status = "5.6.7";
        snprintf(text, sizeof(text), "SMTPUTF8 is required, but was not offered by host %s[%s]",
                 c->host, c->ip);
    } else if (c->ext.size && msg_size(m) > c->ext.size) {
        /* RFC 1870 6.1: don't send what the server said it will not take. */
        status = "5.3.4";
        snprintf(text, sizeof(text), "message size %llu exceeds size limit %llu of server %s[%s]",
                 (unsigned long long)msg_size(m), (unsigned long long)c->ext.size, c->host, c->ip);
    }
    size_t bad = 0;
    for (size_t i = 0; i < m->nrcpt; i++) {
        if (status)
            outcome_set(&m->rcpt[i].out, SMTP_ACT_BOUNCE, 0, status, 0, text);
        else if (!m->rcpt[i].addr || !addr_ok(m->rcpt[i].addr)) {
            outcome_set(&m->rcpt[i].out, SMTP_ACT_BOUNCE, 0, "5.1.3", 0,
                        "bad recipient address syntax");
            bad++;
        }
    }
    if (status || bad == m->nrcpt) {
        c->done_pending = true;
        uv_timer_start(&c->later, on_later, 0, 0);
        return 0;
    }
    c->in_send = true;
    if (c->need_rset) {
        set_state(c, SMTP_ST_RSET);
        send_cmd(c, "RSET\r\n");
    } else {
        start_mail(c);
    }
    c->in_send = false;
    return 0;
}

void smtp_client_quit(struct smtp_client *c)
{
    if (!c || c->closing)
        return;
    if (c->st == SMTP_ST_IDLE && !c->msg)
        start_quit(c);
    else
        smtp_client_abort(c);
}

void smtp_client_abort(struct smtp_client *c)
{
    if (!c || c->closing)
        return;
    fail_session(c, SMTP_ACT_DEFER, "4.4.2", ERR_CLOSED, 0, "delivery to %s[%s] was cancelled",
                 c->host, c->ip);
}

void smtp_client_free(struct smtp_client *c)
{
    if (!c)
        return;
    if (c->st == SMTP_ST_CLOSED) {
        really_free(c);
        return;
    }
    c->free_on_close = true;
    c->cb = NULL;
    if (!c->closing)
        close_session(c);
}

bool smtp_client_usable(const struct smtp_client *c)
{
    return c && !c->closing && !c->broken && c->st == SMTP_ST_IDLE && !c->msg;
}

enum smtp_stage smtp_client_stage(const struct smtp_client *c)
{
    return c->st;
}

const struct smtp_ext *smtp_client_ext(const struct smtp_client *c)
{
    return &c->ext;
}

const struct tls_facts *smtp_client_tls(const struct smtp_client *c)
{
    return c->tls_tried ? &c->facts : NULL;
}

size_t smtp_client_peer_chain(const struct smtp_client *c, struct tls_der *out, size_t max)
{
    return c->stream ? tls_stream_peer_chain(c->stream, out, max) : 0;
}

const struct smtp_outcome *smtp_client_result(const struct smtp_client *c)
{
    return &c->result;
}

const char *smtp_client_relay(const struct smtp_client *c)
{
    return c->relay;
}

const char *smtp_client_ip(const struct smtp_client *c)
{
    return c->ip;
}

const char *smtp_client_local_ip(const struct smtp_client *c)
{
    return c->local_ip;
}

enum smtp_stage smtp_client_failed_stage(const struct smtp_client *c)
{
    return c->fail_stage;
}

const char *smtp_client_greeting(const struct smtp_client *c)
{
    return c->greeting;
}

bool smtp_client_established(const struct smtp_client *c)
{
    return c->established;
}

bool smtp_client_authenticated(const struct smtp_client *c)
{
    return c->authenticated;
}

unsigned smtp_client_messages(const struct smtp_client *c)
{
    return c->nmsgs;
}
