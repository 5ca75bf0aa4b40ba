/*
 * dns.h - public contract of the dns module (see DESIGN.md).
 *
 * Not yet implemented: dns_status() reports ERR_NOTYET.
 */
#ifndef CONVOY_DNS_H
#define CONVOY_DNS_H

/* ERR_NOTYET until the module is built. */
int dns_status(void);

#endif
