/*
 * settings.h - the configuration mapped onto the options of the modules that
 * both programs start: the resolver, the MTA-STS engine, the queue, the SMTP
 * client's timeouts; the name
 * Convoy gives itself in EHLO and DSNs; where the control socket lives.
 *
 * Why a module of its own: conf/ may depend only on base/ (DESIGN.md), so it
 * cannot fill dns/, policy/ or queue/ option structs; convoyd (mta/) and
 * convoyctl (ctl/) both link this small library instead, so convoyctl's live
 * checks see exactly what the daemon sees without linking the daemon.
 *
 * Every function here is pure mapping: no I/O except settings_helo_name's
 * gethostname(2) fallback. Pointers stored in an options struct borrow from
 * the struct conf, which must outlive the options.
 */
#ifndef CONVOY_SETTINGS_H
#define CONVOY_SETTINGS_H

#include <stddef.h>

#include "conf.h"

struct dns_options;
struct policy_options;
struct queue_options;
struct smtp_timeouts;

/* The resolver's options: dns_servers, dns_timeout, dns_tries. */
void settings_dns_options(const struct conf *c, struct dns_options *o);
/* The MTA-STS engine's options (the caller sets the policy cache path). */
void settings_policy_options(const struct conf *c, struct policy_options *o);
/* The queue's options in queue_directory (convoyctl sets read_only; the
 * daemon sets its new-work callback). */
void settings_queue_options(const struct conf *c, struct queue_options *o);
/* The SMTP client's per-stage timeouts: smtp_connect_timeout,
 * smtp_helo_timeout (greeting and EHLO), smtp_starttls_timeout, ...,
 * smtp_quit_timeout. Delivery and convoyctl's probes use the same. */
void settings_smtp_timeouts(const struct conf *c, struct smtp_timeouts *t);
/* The EHLO and DSN name: smtp_helo_name, else myhostname, else the host
 * name, else "localhost". Always NUL-terminated when size > 0. */
void settings_helo_name(const struct conf *c, char *out, size_t size);
/* <queue_directory>/<CTL_SOCKET_NAME>: 0, or ERR_TOOBIG when it does not
 * fit in size. */
int settings_control_socket_path(const struct conf *c, char *out, size_t size);
/* Settings the daemon cannot run with although each value is valid on its
 * own (smtp_tls_security_level = dane / dane-only until DANE is part of the
 * delivery verdict; smtp_dns_support_level = disabled; an smtpd_listen
 * entry with the submission or submissions role without
 * smtpd_tls_cert_file and smtpd_auth_file). 0, or ERR_NOTYET / ERR_INVAL
 * with one line per problem appended to errors. */
int settings_conf_check(const struct conf *c, struct buf *errors);
/* shared_state (docs/scale-out.md) mapped onto the client's options: 1
 * when shared_state is empty (nothing to start); 0 with *o (and *u, the
 * parsed URL, when not NULL) filled; ERR_INVAL or ERR_NOTYET (rediss://)
 * with one line appended to errors. o->node is shared_state_node, or
 * myhostname (the caller puts the system host name there when both are
 * empty); o->loop is the caller's. Valid while c is. */
struct shared_options;
struct shared_url;
int settings_shared_options(const struct conf *c, struct shared_options *o, struct shared_url *u,
                            struct buf *errors);
/* The names TLS reports carry (RFC 8460 4.1, 5.3), with their defaults:
 * submitter = tlsrpt_submitter or myhostname or the host name (lower case);
 * sender = tlsrpt_sender or noreply-tlsrpt@submitter; organization =
 * tlsrpt_organization_name or submitter; contact = tlsrpt_contact_info or
 * sender. */
struct settings_tlsrpt_names {
    char submitter[256];
    char sender[320];
    char organization[256];
    char contact[320];
};
void settings_tlsrpt_names(const struct conf *c, struct settings_tlsrpt_names *n);

#endif
