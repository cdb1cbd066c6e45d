/*
 * unit.h - the CUnit suites of the unit test runner. Each test_*.c file
 * registers its suites with one function declared here.
 */
#ifndef LB_UNIT_H
#define LB_UNIT_H

#include <CUnit/CUnit.h>

void register_clock_tests(void);
void register_strbuf_tests(void);
void register_config_tests(void);
void register_router_tests(void);
void register_params_tests(void);
void register_jsonscan_tests(void);
void register_responder_tests(void);
void register_workspace_tests(void);
void register_retry_tests(void);
void register_identity_tests(void);
void register_process_tests(void);
void register_shm_tests(void);
void register_metrics_tests(void);
void register_log_tests(void);
void register_request_tests(void);

#endif
