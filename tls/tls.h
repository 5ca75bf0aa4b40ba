/*
 * tls.h - public contract of the tls module (see DESIGN.md).
 *
 * Not yet implemented: tls_status() reports ERR_NOTYET.
 */
#ifndef CONVOY_TLS_H
#define CONVOY_TLS_H

/* ERR_NOTYET until the module is built. */
int tls_status(void);

#endif
