/*
 * smtp.c - placeholder for the smtp module; every entry point says "not yet".
 */
#include "smtp.h"

#include "base.h"

int smtp_status(void)
{
    return ERR_NOTYET;
}
