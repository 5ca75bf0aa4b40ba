/*
 * auth.c - SMTP AUTH to the next hop (a smart host), Postfix's
 * smtp_sasl_auth_enable and smtp_sasl_password_maps: the table is read at
 * start and on reload (conf_sasl_passwords_load() refuses a file others can
 * read, and never puts a password in an error), and each connection is told
 * the credentials of its next hop. The SMTP client runs the exchange
 * (smtp/client.c); the verdict classifies a failure (VR_AUTH_FAILED).
 *
 * Lookup order: the next-hop destination as written (relayhost
 * "[host]:port", or the recipient domain for MX delivery), then the name of
 * the remote host the connection goes to. conf_sasl_find() tries each with
 * and without the port and in both bracket forms. (Postfix's
 * smtp_sasl_glue.c asks for the remote host name before the next hop; the
 * order matters only to a table that has both keys with different
 * credentials, and the next hop as written is what operators key on.)
 *
 * Invariant: no password is ever logged here; the client copies what it is
 * given, so a reload may free the table under a session in progress.
 */
#include <stdio.h>
#include <string.h>

#include "conf.h"
#include "deliver_int.h"

int delivery_sasl_load(const struct conf *c, struct conf_map **out, struct buf *err)
{
    *out = NULL;
    if (!c->smtp_sasl_auth_enable)
        return 0;
    if (!c->smtp_sasl_password_maps || !*c->smtp_sasl_password_maps) {
        buf_printf(err, "smtp_sasl_auth_enable = yes needs smtp_sasl_password_maps\n");
        return ERR_INVAL;
    }
    *out = conf_sasl_passwords_load(c->smtp_sasl_password_maps, err);
    return *out ? 0 : ERR_INVAL;
}

bool conn_auth(const struct conn *cn, const char **user, const char **password)
{
    *user = *password = NULL;
    const struct dest *d = cn->dest;
    const struct delivery *dl = d->dl;
    if (!dl->sasl)
        return false;
    int rc;
    if (dl->relay)
        rc = conf_sasl_find(dl->sasl, dl->relayhost.host, dl->relayhost.port,
                            dl->relayhost.bracketed, user, password);
    else
        rc = conf_sasl_find(dl->sasl, d->name, 0, false, user, password);
    if (rc != 0) {
        const struct target *t = conn_target(cn);
        rc = conf_sasl_find(dl->sasl, t->host, dest_port(dl), false, user, password);
    }
    if (rc != 0) {
        *user = *password = NULL;
        return false;
    }
    return true;
}
