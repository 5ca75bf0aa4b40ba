/*
 * ctl.h - the inside of convoyctl: its control-socket client and its
 * subcommands. Private to ctl/.
 *
 * convoyctl links the libraries (base conf queue dns tls smtp policy and
 * settings), never the daemon (mta/) or the delivery engine; what it shares
 * with convoyd is ctl_proto.h (command and field names) and base.h's exit
 * codes.
 */
#ifndef CONVOY_CTL_H
#define CONVOY_CTL_H

#include <jansson.h>
#include <uv.h>

#include "base.h"
#include "conf.h"
#include "ctl_proto.h"
#include "settings.h"

/*
 * ctl_client.c: send one request, wait up to timeout_ms for the answer.
 * Returns 0 with *response set (the daemon's object, which may say
 * "ok": false), EXIT_NOT_RUNNING when the daemon is not running, 1 on other
 * errors (printed to stderr).
 */
int ctl_request(const struct conf *c, json_t *request, json_t **response, int timeout_ms);

/*
 * The subcommands, each in its own file. argv[0] is the subcommand name
 * ("queue", "dns", ...). Return the process exit code: 0 ok, 1 failure,
 * EXIT_USAGE, EXIT_NOT_RUNNING.
 */
int ctl_queue(struct conf *c, int argc, char **argv);
int ctl_dns(struct conf *c, int argc, char **argv);
int ctl_sts(struct conf *c, int argc, char **argv);
int ctl_dane(struct conf *c, int argc, char **argv);
int ctl_tls(struct conf *c, int argc, char **argv);
int ctl_tlsrpt(struct conf *c, int argc, char **argv);
int ctl_dkim(struct conf *c, int argc, char **argv);
int ctl_status(struct conf *c, int argc, char **argv);
int ctl_reload(struct conf *c, int argc, char **argv);
int ctl_pause(struct conf *c, int argc, char **argv);
int ctl_resume(struct conf *c, int argc, char **argv);

struct dns;
/* ctl_dane.c: does DANE govern an MX host (its TLSA RRset secure, or its
 * lookup failed or bogus, with the MX and address records secure)? why:
 * a line for the operator. Runs the loop until the lookup ends. */
bool ctl_dane_applies(uv_loop_t *loop, struct dns *dns, uint16_t port, bool mx_secure,
                      bool host_secure, const char *host, const char *canonical, char *why,
                      size_t size);

#endif
