/*
 * test_identity.c - identity headers of on-behalf-of-user routes: both
 * required, trimmed, refused when repeated or unusable; the development
 * fallback only when explicitly enabled.
 */
#include <string.h>

#include "config.h"
#include "identity.h"
#include "unit.h"

static struct lb_config test_cfg = {
	.email_header = "X-Forwarded-Email",
	.token_header = "X-Forwarded-Access-Token",
};

static int
extract(const char *const *env, bool dev_mode, struct request_identity *ri, struct lb_error *err)
{
	struct http_request req;

	memset(&req, 0, sizeof(req));
	req.params = (char **)env;   /* only read */
	test_cfg.development_mode = dev_mode;
	lb_error_clear(err);
	return identity_from_request(&test_cfg, &req, AUTH_ON_BEHALF_OF_USER, ri, err);
}

static const unsigned char TOK1_SHA256[TOKEN_FP_LEN] = {
	0x65, 0xdc, 0xf1, 0x6e, 0xa3, 0xdf, 0xa4, 0x90, 0x69, 0x62, 0x80, 0x89, 0xeb, 0x4a, 0x75, 0x48,
	0x30, 0x70, 0xf5, 0x58, 0x4b, 0x2a, 0x21, 0xee, 0x64, 0x91, 0x2b, 0x5f, 0x62, 0x1f, 0x12, 0xda
};

static void
test_both_headers_trimmed(void)
{
	const char *env[] = { "HTTP_X_FORWARDED_EMAIL=  alice@example.com\t",
			      "HTTP_X_FORWARDED_ACCESS_TOKEN= tok-1 ", NULL };
	struct request_identity ri;
	struct request_identity other;
	struct lb_error err;

	CU_ASSERT_EQUAL_FATAL(extract(env, false, &ri, &err), 0);
	CU_ASSERT_EQUAL(ri.id.kind, IDENTITY_USER);
	CU_ASSERT_STRING_EQUAL(ri.id.email, "alice@example.com");
	CU_ASSERT_STRING_EQUAL(ri.id.workspace_token, "tok-1");
	CU_ASSERT_FALSE(ri.development_fallback);
	/* SHA-256("tok-1"), as `printf tok-1 | sha256sum` prints it. */
	CU_ASSERT_EQUAL(memcmp(ri.id.token_fp, TOK1_SHA256, TOKEN_FP_LEN), 0);

	/* Trimmed values are copies the identity owns... */
	CU_ASSERT_PTR_EQUAL(ri.email, ri.email_copy);
	CU_ASSERT_PTR_EQUAL(ri.token, ri.token_copy);

	/* The fingerprint binds the token: another token, another key. */
	{
		const char *env2[] = { "HTTP_X_FORWARDED_EMAIL=alice@example.com",
				       "HTTP_X_FORWARDED_ACCESS_TOKEN=tok-2", NULL };
		CU_ASSERT_EQUAL_FATAL(extract(env2, false, &other, &err), 0);
		CU_ASSERT_NOT_EQUAL(memcmp(ri.id.token_fp, other.id.token_fp, TOKEN_FP_LEN), 0);
		/* ...values that need no trimming are the parameters themselves. */
		CU_ASSERT_PTR_EQUAL(other.email, env2[0] + strlen("HTTP_X_FORWARDED_EMAIL="));
		CU_ASSERT_PTR_EQUAL(other.token, env2[1] + strlen("HTTP_X_FORWARDED_ACCESS_TOKEN="));
		CU_ASSERT_PTR_NULL(other.email_copy);
		CU_ASSERT_PTR_NULL(other.token_copy);
		request_identity_free(&other);
	}
	request_identity_free(&ri);
}

static void
expect_refused(const char *const *env, bool dev_mode, enum lb_errcode code)
{
	struct request_identity ri;
	struct lb_error err;

	CU_ASSERT_EQUAL(extract(env, dev_mode, &ri, &err), -1);
	CU_ASSERT_EQUAL(err.code, code);
	CU_ASSERT_PTR_NULL(ri.email);
	CU_ASSERT_PTR_NULL(ri.token);
	if (code == LB_ERR_UNAUTHENTICATED)
		CU_ASSERT_STRING_EQUAL(err.message,
				       "Authentication required: this resource needs the user's identity.");
}

static void
test_missing_or_blank_is_401(void)
{
	const char *no_token[] = { "HTTP_X_FORWARDED_EMAIL=alice@example.com", NULL };
	const char *no_email[] = { "HTTP_X_FORWARDED_ACCESS_TOKEN=tok", NULL };
	const char *blank_email[] = { "HTTP_X_FORWARDED_EMAIL= \t ", "HTTP_X_FORWARDED_ACCESS_TOKEN=tok", NULL };
	const char *empty_token[] = { "HTTP_X_FORWARDED_EMAIL=alice@example.com",
				      "HTTP_X_FORWARDED_ACCESS_TOKEN=", NULL };
	const char *none[] = { NULL };

	expect_refused(no_token, false, LB_ERR_UNAUTHENTICATED);
	expect_refused(no_email, false, LB_ERR_UNAUTHENTICATED);
	expect_refused(blank_email, false, LB_ERR_UNAUTHENTICATED);
	expect_refused(empty_token, false, LB_ERR_UNAUTHENTICATED);
	expect_refused(none, false, LB_ERR_UNAUTHENTICATED);
	/* Development mode does not cover a half-present identity. */
	expect_refused(no_token, true, LB_ERR_UNAUTHENTICATED);
}

static void
test_repeated_header_is_400(void)
{
	const char *twice[] = { "HTTP_X_FORWARDED_EMAIL=alice@example.com",
				"HTTP_X_FORWARDED_EMAIL=bob@example.com",
				"HTTP_X_FORWARDED_ACCESS_TOKEN=tok", NULL };

	expect_refused(twice, false, LB_ERR_BAD_REQUEST);
}

static void
test_unusable_values(void)
{
	char long_email[96];
	const char *too_long[] = { long_email, "HTTP_X_FORWARDED_ACCESS_TOKEN=tok", NULL };
	const char *not_email[] = { "HTTP_X_FORWARDED_EMAIL=alice", "HTTP_X_FORWARDED_ACCESS_TOKEN=tok", NULL };
	const char *space_token[] = { "HTTP_X_FORWARDED_EMAIL=a@b", "HTTP_X_FORWARDED_ACCESS_TOKEN=to k", NULL };

	/* 64 bytes: PostgreSQL would truncate it to another role's name. */
	memset(long_email, 'a', sizeof(long_email));
	memcpy(long_email, "HTTP_X_FORWARDED_EMAIL=", 23);
	memcpy(long_email + 23 + 60, "@e.x", 5);
	CU_ASSERT_EQUAL(strlen(long_email + 23), 64);
	expect_refused(too_long, false, LB_ERR_UNAUTHENTICATED);
	expect_refused(not_email, false, LB_ERR_UNAUTHENTICATED);
	expect_refused(space_token, false, LB_ERR_UNAUTHENTICATED);
}

static void
test_development_fallback(void)
{
	const char *none[] = { NULL };
	struct request_identity ri;
	struct lb_error err;

	CU_ASSERT_EQUAL_FATAL(extract(none, true, &ri, &err), 0);
	CU_ASSERT_EQUAL(ri.id.kind, IDENTITY_SP);
	CU_ASSERT_TRUE(ri.development_fallback);
	request_identity_free(&ri);
}

static void
test_service_principal_route_ignores_headers(void)
{
	const char *env[] = { "HTTP_X_FORWARDED_EMAIL=alice@example.com", NULL };
	struct http_request req;
	struct request_identity ri;
	struct lb_error err;

	memset(&req, 0, sizeof(req));
	req.params = (char **)env;
	CU_ASSERT_EQUAL(identity_from_request(&test_cfg, &req, AUTH_SERVICE_PRINCIPAL, &ri, &err), 0);
	CU_ASSERT_EQUAL(ri.id.kind, IDENTITY_SP);
	request_identity_free(&ri);
}

void
register_identity_tests(void)
{
	CU_pSuite s = CU_add_suite("identity", NULL, NULL);

	CU_add_test(s, "both headers, trimmed, token fingerprinted", test_both_headers_trimmed);
	CU_add_test(s, "missing or blank header is 401", test_missing_or_blank_is_401);
	CU_add_test(s, "repeated header is 400", test_repeated_header_is_400);
	CU_add_test(s, "unusable email or token", test_unusable_values);
	CU_add_test(s, "development mode serves as the SP", test_development_fallback);
	CU_add_test(s, "service-principal route ignores headers", test_service_principal_route_ignores_headers);
}
