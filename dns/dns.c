/*
 * dns.c - placeholder for the dns module; every entry point says "not yet".
 */
#include "dns.h"

#include "base.h"

int dns_status(void)
{
    return ERR_NOTYET;
}
