/*
 * policy.c - placeholder for the policy module; every entry point says "not yet".
 */
#include "policy.h"

#include "base.h"

int policy_status(void)
{
    return ERR_NOTYET;
}
