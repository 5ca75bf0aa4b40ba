/*
 * tls.c - placeholder for the tls module; every entry point says "not yet".
 */
#include "tls.h"

#include "base.h"

int tls_status(void)
{
    return ERR_NOTYET;
}
