/*
 * unit_main.c - runs every CUnit suite and prints CUnit's run summary, plus
 * a plain "N passed, N failed" line for the test command's output.
 */
#include <stdio.h>
#include <stdlib.h>

#include <CUnit/Basic.h>

#include "unit.h"

int
main(void)
{
	unsigned int failed, ran;

	if (CU_initialize_registry() != CUE_SUCCESS)
		return 2;
	register_clock_tests();
	register_strbuf_tests();
	register_config_tests();
	register_router_tests();
	register_params_tests();
	register_jsonscan_tests();
	register_responder_tests();
	register_workspace_tests();
	register_retry_tests();
	register_identity_tests();
	register_process_tests();
	register_shm_tests();
	register_metrics_tests();
	register_log_tests();
	register_request_tests();
	CU_basic_set_mode(CU_BRM_NORMAL);
	CU_basic_run_tests();
	failed = CU_get_number_of_tests_failed();
	ran = CU_get_number_of_tests_run();
	printf("\nunit: %u passed, %u failed\n", ran - failed, failed);
	CU_cleanup_registry();
	return failed == 0 && CU_get_error() == CUE_SUCCESS ? 0 : 1;
}
