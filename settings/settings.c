/*
 * settings.c - the configuration mapped onto the options of the modules the
 * daemon and convoyctl both start (resolver, MTA-STS engine, queue), and the
 * name Convoy gives itself in EHLO and in DSNs. One place, so convoyctl's
 * live checks see what the daemon sees.
 */
#include "settings.h"

#include <stdio.h>
#include <unistd.h>

#include "ctl_proto.h"
#include "dns.h"
#include "policy.h"
#include "queue.h"
#include "smtp.h"

void settings_dns_options(const struct conf *c, struct dns_options *o)
{
    dns_options_default(o);
    o->servers = (const char *const *)c->dns_servers.v;
    o->n_servers = c->dns_servers.n;
    o->timeout_ms = (int)(c->dns_timeout * 1000);
    o->tries = (int)c->dns_tries;
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
