/*
 * settings.c - the configuration mapped onto the options of the modules the
 * daemon and convoyctl both start (resolver, MTA-STS engine, queue), and the
 * name Convoy gives itself in EHLO and in DSNs. One place, so convoyctl's
 * live checks see what the daemon sees.
 */
#include "settings.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl_proto.h"
#include "dns.h"
#include "policy.h"
#include "queue.h"
#include "shared.h"
#include "smtp.h"

void settings_dns_options(const struct conf *c, struct dns_options *o)
{
    dns_options_default(o);
    o->servers = (const char *const *)c->dns_servers.v;
    o->n_servers = c->dns_servers.n;
    o->timeout_ms = (int)(c->dns_timeout * 1000);
    o->tries = (int)c->dns_tries;
    o->dnssec = c->smtp_dns_support_level && strcmp(c->smtp_dns_support_level, "dnssec") == 0;
    o->validating = (const char *const *)c->dns_validating_servers.v;
    o->n_validating = c->dns_validating_servers.n;
}

int settings_conf_check(const struct conf *c, struct buf *errors)
{
    /* A submission port (RFC 6409, RFC 8314) takes mail only after AUTH,
     * which is offered only over TLS: without a certificate or without
     * credentials it could take no mail at all. */
    bool have_tls = c->smtpd_tls_cert_file && *c->smtpd_tls_cert_file;
    bool have_auth = c->smtpd_auth_file && *c->smtpd_auth_file;
    int rc = 0;
    for (size_t i = 0; i < c->smtpd_listen.n; i++) {
        struct conf_hostport hp;
        enum conf_listen_role role;
        if (conf_parse_listen(c->smtpd_listen.v[i], &hp, &role) != 0 || role == CONF_LISTEN_SMTP ||
            (have_tls && have_auth))
            continue;
        buf_printf(errors,
                   "smtpd_listen: \"%s\": the %s role needs %s%s%s (AUTH is required "
                   "there and offered only over TLS)\n",
                   c->smtpd_listen.v[i], conf_listen_role_name(role),
                   have_tls ? "" : "smtpd_tls_cert_file", !have_tls && !have_auth ? " and " : "",
                   have_auth ? "" : "smtpd_auth_file");
        rc = ERR_INVAL;
    }
    if (rc != 0)
        return rc;
    if (settings_shared_options(c, NULL, NULL, errors) < 0)
        return ERR_INVAL;
    if (c->smtp_dns_support_level && strcmp(c->smtp_dns_support_level, "disabled") == 0) {
        buf_printf(errors, "smtp_dns_support_level = disabled: delivery without DNS is not "
                           "supported; use enabled or dnssec\n");
        return ERR_NOTYET;
    }
    return 0;
}

void settings_policy_options(const struct conf *c, struct policy_options *o)
{
    policy_options_default(o);
    o->ca_file = c->smtp_tls_CAfile;
    o->https_port = (uint16_t)c->sts_policy_https_port;
    o->fetch_timeout_ms = (uint32_t)(c->sts_fetch_timeout * 1000);
    o->connect_timeout_ms = (uint32_t)(c->sts_connect_timeout * 1000);
    o->max_policy_size = (size_t)c->sts_max_policy_size;
    o->txt_check_s = (uint32_t)c->sts_txt_check_interval;
    o->refresh_s = (uint32_t)c->sts_refresh_interval;
    o->retry_after_s = (uint32_t)c->sts_fetch_retry_time;
}

void settings_queue_options(const struct conf *c, struct queue_options *o)
{
    queue_options_default(o);
    o->directory = c->queue_directory;
    o->message_size_limit = c->message_size_limit;
    o->minimal_backoff = c->minimal_backoff_time;
    o->maximal_backoff = c->maximal_backoff_time;
    o->maximal_lifetime = c->maximal_queue_lifetime;
    o->bounce_lifetime = c->bounce_queue_lifetime;
}

void settings_smtp_timeouts(const struct conf *c, struct smtp_timeouts *t)
{
    *t = (struct smtp_timeouts){
        .connect = (uint32_t)(c->smtp_connect_timeout * 1000),
        .greeting = (uint32_t)(c->smtp_helo_timeout * 1000),
        .helo = (uint32_t)(c->smtp_helo_timeout * 1000),
        .starttls = (uint32_t)(c->smtp_starttls_timeout * 1000),
        .mail = (uint32_t)(c->smtp_mail_timeout * 1000),
        .rcpt = (uint32_t)(c->smtp_rcpt_timeout * 1000),
        .data_init = (uint32_t)(c->smtp_data_init_timeout * 1000),
        .data_block = (uint32_t)(c->smtp_data_xfer_timeout * 1000),
        .data_done = (uint32_t)(c->smtp_data_done_timeout * 1000),
        .rset = (uint32_t)(c->smtp_rset_timeout * 1000),
        .quit = (uint32_t)(c->smtp_quit_timeout * 1000),
    };
}

void settings_helo_name(const struct conf *c, char *out, size_t size)
{
    if (size == 0)
        return;
    if (c->smtp_helo_name && c->smtp_helo_name[0])
        str_copy(out, c->smtp_helo_name, size);
    else if (c->myhostname && c->myhostname[0])
        str_copy(out, c->myhostname, size);
    else if (gethostname(out, size) != 0 || !out[0])
        str_copy(out, "localhost", size);
    out[size - 1] = '\0';
}

int settings_control_socket_path(const struct conf *c, char *out, size_t size)
{
    int n = snprintf(out, size, "%s/%s", c->queue_directory, CTL_SOCKET_NAME);
    return n < 0 || (size_t)n >= size ? ERR_TOOBIG : 0;
}

void settings_tlsrpt_names(const struct conf *c, struct settings_tlsrpt_names *n)
{
    if (c->tlsrpt_submitter && c->tlsrpt_submitter[0])
        str_copy(n->submitter, c->tlsrpt_submitter, sizeof(n->submitter));
    else if (c->myhostname && c->myhostname[0])
        str_copy(n->submitter, c->myhostname, sizeof(n->submitter));
    else if (gethostname(n->submitter, sizeof(n->submitter)) != 0 || !n->submitter[0])
        str_copy(n->submitter, "localhost", sizeof(n->submitter));
    n->submitter[sizeof(n->submitter) - 1] = '\0';
    /* Lower case, no trailing dot: it goes into file names and ids. */
    for (char *p = n->submitter; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    size_t l = strlen(n->submitter);
    if (l > 1 && n->submitter[l - 1] == '.')
        n->submitter[l - 1] = '\0';
    if (c->tlsrpt_sender && c->tlsrpt_sender[0])
        str_copy(n->sender, c->tlsrpt_sender, sizeof(n->sender));
    else
        snprintf(n->sender, sizeof(n->sender), "noreply-tlsrpt@%s", n->submitter);
    str_copy(n->organization,
             c->tlsrpt_organization_name && c->tlsrpt_organization_name[0]
                 ? c->tlsrpt_organization_name
                 : n->submitter,
             sizeof(n->organization));
    str_copy(n->contact,
             c->tlsrpt_contact_info && c->tlsrpt_contact_info[0] ? c->tlsrpt_contact_info
                                                                 : n->sender,
             sizeof(n->contact));
}

/* "0.25" or "1/4": a share in (0, 1]; -1 when malformed. */
static double parse_share(const char *s)
{
    char *end = NULL;
    if (strncmp(s, "1/", 2) == 0) {
        long n = strtol(s + 2, &end, 10);
        return *end == '\0' && n >= 1 && n <= 10000 ? 1.0 / (double)n : -1;
    }
    double v = strtod(s, &end);
    return end != s && *end == '\0' && v > 0 && v <= 1 ? v : -1;
}

int settings_shared_options(const struct conf *c, struct shared_options *o, struct shared_url *u,
                            struct buf *errors)
{
    if (!c->shared_state || !c->shared_state[0])
        return 1;
    struct shared_url tmp;
    struct buf why;
    buf_init(&why, 1024);
    int rc = shared_url_parse(c->shared_state, u ? u : &tmp, &why);
    if (rc != 0) {
        buf_printf(errors, "%s\n", why.data ? why.data : "shared_state: invalid");
        buf_free(&why);
        return rc;
    }
    buf_free(&why);
    const struct shared_url *url = u ? u : &tmp;
    const char *ca = c->shared_state_tls_CAfile;
    if (url->tls && ca && ca[0] && access(ca, R_OK) != 0) {
        buf_printf(errors, "shared_state_tls_CAfile: %s: %s\n", ca, strerror(errno));
        return ERR_INVAL;
    }
    /* The TLS socket's path must fit a sockaddr_un (tls_bridge.h). */
    if (url->tls && c->queue_directory &&
        strlen(c->queue_directory) + sizeof("/" SHARED_TLS_DIR "/redis.sock") >
            SHARED_TLS_SOCKET_PATH_MAX) {
        buf_printf(errors,
                   "shared_state: rediss:// needs a socket in queue_directory/" SHARED_TLS_DIR
                   " and %s is too long for one (at most %zu characters)\n",
                   c->queue_directory,
                   (size_t)SHARED_TLS_SOCKET_PATH_MAX - sizeof("/" SHARED_TLS_DIR "/redis.sock"));
        return ERR_INVAL;
    }
    double share = 0;
    if (c->shared_state_fallback_share && c->shared_state_fallback_share[0]) {
        share = parse_share(c->shared_state_fallback_share);
        if (share < 0) {
            buf_printf(errors,
                       "shared_state_fallback_share: \"%s\": must be a fraction in (0, 1] "
                       "(0.25) or 1/N\n",
                       c->shared_state_fallback_share);
            return ERR_INVAL;
        }
    }
    if (o) {
        memset(o, 0, sizeof(*o));
        o->url = c->shared_state;
        o->node =
            c->shared_state_node && c->shared_state_node[0] ? c->shared_state_node : c->myhostname;
        o->fallback_share = share;
        o->ca_file = c->shared_state_tls_CAfile;
    }
    return 0;
}
