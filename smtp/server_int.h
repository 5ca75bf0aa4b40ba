/*
 * server_int.h - declarations shared by the SMTP server's source files and
 * nobody else (server.c, server_auth.c).
 */
#ifndef CONVOY_SMTP_SERVER_INT_H
#define CONVOY_SMTP_SERVER_INT_H

#include "server_parse.h"
#include "smtp.h"

/* The answer of a password check: runs on the loop thread. */
typedef void (*smtpd_auth_cb)(void *arg, bool ok);

/* Check user/password against c on the thread pool; cb runs later on the
 * loop thread exactly once, unless this returns an error. */
int smtpd_auth_check(uv_loop_t *loop, const struct smtpd_credentials *c, const char *user,
                     const char *password, smtpd_auth_cb cb, void *arg);

#endif
