/*
 * test_workspace.c - the workspace answers' parsers (credential, OAuth
 * token, OIDC discovery), RFC 3339 timestamps, and the token fingerprint of
 * a user identity.
 */
#include <stdlib.h>
#include <string.h>

#include "credential.h"
#include "unit.h"
#include "workspace.h"

#define T_2026_01_02_030405 ((time_t)1767323045)
#define BAD_ANSWER "The workspace API returned an unexpected answer."

/* ------------------------------------------------------------------ */
/* helpers */

static int
parse_cred(const char *body, struct db_credential *cred, struct lb_error *err)
{
	lb_error_clear(err);
	return workspace_parse_credential(body, strlen(body), cred, err);
}

/* The parse fails as a permanent upstream error with exactly `detail`. */
static void
assert_cred_fails(const char *body, const char *detail)
{
	struct db_credential cred = { 0 };
	struct lb_error err;

	CU_ASSERT_EQUAL(parse_cred(body, &cred, &err), -1);
	CU_ASSERT_PTR_NULL(cred.token);
	CU_ASSERT_EQUAL(err.code, LB_ERR_UPSTREAM);
	CU_ASSERT_EQUAL(err.transience, LB_PERMANENT);
	CU_ASSERT_STRING_EQUAL(err.message, BAD_ANSWER);
	CU_ASSERT_STRING_EQUAL(err.detail, detail);
}

static void
assert_oauth_fails(const char *body, const char *detail)
{
	struct lb_error err;
	char *token = (char *)"untouched";
	long expires_in = -1;

	lb_error_clear(&err);
	CU_ASSERT_EQUAL(workspace_parse_oauth_token(body, strlen(body), &token, &expires_in, &err), -1);
	CU_ASSERT_PTR_NULL(token);
	CU_ASSERT_EQUAL(expires_in, 0);
	CU_ASSERT_EQUAL(err.code, LB_ERR_UPSTREAM);
	CU_ASSERT_STRING_EQUAL(err.message, BAD_ANSWER);
	CU_ASSERT_STRING_EQUAL(err.detail, detail);
}

static void
assert_discovery_fails(const char *body, const char *detail)
{
	struct lb_error err;
	char *url = (char *)"untouched";

	lb_error_clear(&err);
	CU_ASSERT_EQUAL(workspace_parse_discovery(body, strlen(body), &url, &err), -1);
	CU_ASSERT_PTR_NULL(url);
	CU_ASSERT_EQUAL(err.code, LB_ERR_UPSTREAM);
	CU_ASSERT_STRING_EQUAL(err.detail, detail);
}

static time_t
rfc3339(const char *text)
{
	time_t t = 12345;

	CU_ASSERT_EQUAL_FATAL(parse_rfc3339(text, &t), 0);
	return t;
}

static void
assert_not_rfc3339(const char *text)
{
	time_t t = 12345;

	CU_ASSERT_EQUAL(parse_rfc3339(text, &t), -1);
	CU_ASSERT_EQUAL(t, 12345);	/* untouched on failure */
}

/* ------------------------------------------------------------------ */
/* credential answers */

static void
test_credential_ok(void)
{
	struct db_credential cred = { 0 };
	struct lb_error err;

	CU_ASSERT_EQUAL(parse_cred("{\"token\": \"eyJ.abc.def\", \"expire_time\": \"2026-01-02T03:04:05Z\"}",
				   &cred, &err), 0);
	CU_ASSERT_STRING_EQUAL(cred.token, "eyJ.abc.def");
	CU_ASSERT_EQUAL(cred.expires_at, T_2026_01_02_030405);
	db_credential_clear(&cred);
	CU_ASSERT_PTR_NULL(cred.token);
	CU_ASSERT_EQUAL(cred.expires_at, 0);
}

static void
test_credential_extra_fields_and_offset(void)
{
	struct db_credential cred = { 0 };
	struct lb_error err;

	CU_ASSERT_EQUAL(parse_cred("{\"expire_time\": \"2026-01-02T05:04:05.123456789+02:00\","
				   " \"token\": \"t\", \"other\": [1, {\"x\": null}]}", &cred, &err), 0);
	CU_ASSERT_STRING_EQUAL(cred.token, "t");
	CU_ASSERT_EQUAL(cred.expires_at, T_2026_01_02_030405);
	db_credential_clear(&cred);
}

static void
test_credential_length_is_respected(void)
{
	const char *text = "{\"token\":\"t\",\"expire_time\":\"2026-01-02T03:04:05Z\"}trailing garbage";
	size_t len = strlen(text) - strlen("trailing garbage");
	struct db_credential cred = { 0 };
	struct lb_error err;
	char *body;

	/* not NUL-terminated: the parser must stop at len */
	body = malloc(len);
	CU_ASSERT_PTR_NOT_NULL_FATAL(body);
	memcpy(body, text, len);
	lb_error_clear(&err);
	CU_ASSERT_EQUAL(workspace_parse_credential(body, len, &cred, &err), 0);
	CU_ASSERT_STRING_EQUAL(cred.token, "t");
	db_credential_clear(&cred);
	free(body);
}

static void
test_credential_not_json(void)
{
	struct db_credential cred = { 0 };
	struct lb_error err;

	assert_cred_fails("", "answer is not JSON");
	assert_cred_fails("<html>502 Bad Gateway</html>", "answer is not JSON");
	assert_cred_fails("{\"token\": \"t\"", "answer is not JSON");
	assert_cred_fails("{\"token\": \"t\", \"expire_time\": \"2026-01-02T03:04:05Z\"} {}",
			  "answer is not JSON");
	assert_cred_fails("[{\"token\": \"t\"}]", "answer is not a JSON object");
	assert_cred_fails("\"token\"", "answer is not a JSON object");
	/* an embedded NUL is not JSON either */
	lb_error_clear(&err);
	CU_ASSERT_EQUAL(workspace_parse_credential("{\"token\":\"a\0b\"}", 15, &cred, &err), -1);
	CU_ASSERT_STRING_EQUAL(err.detail, "answer is not JSON");
}

static void
test_credential_too_deep(void)
{
	char body[2 * 200 + 1];

	/* nesting is bounded before yajl_tree builds (and recursively frees) it */
	memset(body, '[', 200);
	memset(body + 200, ']', 200);
	body[400] = '\0';
	assert_cred_fails(body, "answer is not JSON");
}

static void
test_credential_token_missing(void)
{
	assert_cred_fails("{\"expire_time\": \"2026-01-02T03:04:05Z\"}", "token missing or not a string");
	assert_cred_fails("{\"token\": 42, \"expire_time\": \"2026-01-02T03:04:05Z\"}",
			  "token missing or not a string");
	assert_cred_fails("{\"token\": null, \"expire_time\": \"2026-01-02T03:04:05Z\"}",
			  "token missing or not a string");
	assert_cred_fails("{\"token\": \"\", \"expire_time\": \"2026-01-02T03:04:05Z\"}",
			  "token missing or not a string");
	assert_cred_fails("{\"Token\": \"t\", \"expire_time\": \"2026-01-02T03:04:05Z\"}",
			  "token missing or not a string");
}

static void
test_credential_expire_time_bad(void)
{
	struct db_credential cred = { 0 };
	struct lb_error err;

	assert_cred_fails("{\"token\": \"t\"}", "expire_time missing");
	assert_cred_fails("{\"token\": \"t\", \"expire_time\": null}", "expire_time missing");
	assert_cred_fails("{\"token\": \"t\", \"expire_time\": 1767323045}", "expire_time is not RFC 3339");
	assert_cred_fails("{\"token\": \"t\", \"expire_time\": \"2026-02-30T00:00:00Z\"}",
			  "expire_time is not RFC 3339");
	assert_cred_fails("{\"token\": \"t\", \"expire_time\": \"tomorrow\"}", "expire_time is not RFC 3339");
	/* the detail never quotes the token */
	CU_ASSERT_EQUAL(parse_cred("{\"token\": \"SECRET-TOKEN-VALUE\", \"expire_time\": \"soon\"}",
				   &cred, &err), -1);
	CU_ASSERT_PTR_NULL(strstr(err.detail, "SECRET"));
	CU_ASSERT_PTR_NULL(strstr(err.message, "SECRET"));
}

/* ------------------------------------------------------------------ */
/* OAuth token answers */

static void
test_oauth_ok(void)
{
	struct lb_error err;
	char *token = NULL;
	long expires_in = 0;
	const char *body = "{\"access_token\": \"dapi-xyz\", \"token_type\": \"Bearer\", "
			   "\"expires_in\": 3600, \"scope\": \"all-apis\"}";

	lb_error_clear(&err);
	CU_ASSERT_EQUAL(workspace_parse_oauth_token(body, strlen(body), &token, &expires_in, &err), 0);
	CU_ASSERT_STRING_EQUAL(token, "dapi-xyz");
	CU_ASSERT_EQUAL(expires_in, 3600);
	secret_free(token);

	/* token_type is optional, and compared case-insensitively */
	body = "{\"access_token\": \"a\", \"expires_in\": 1}";
	CU_ASSERT_EQUAL(workspace_parse_oauth_token(body, strlen(body), &token, &expires_in, &err), 0);
	CU_ASSERT_EQUAL(expires_in, 1);
	secret_free(token);
	body = "{\"access_token\": \"a\", \"expires_in\": 60, \"token_type\": \"bearer\"}";
	CU_ASSERT_EQUAL(workspace_parse_oauth_token(body, strlen(body), &token, &expires_in, &err), 0);
	secret_free(token);
}

static void
test_oauth_malformed(void)
{
	assert_oauth_fails("nope", "answer is not JSON");
	assert_oauth_fails("{\"expires_in\": 3600}", "access_token missing or not a string");
	assert_oauth_fails("{\"access_token\": [], \"expires_in\": 3600}", "access_token missing or not a string");
	assert_oauth_fails("{\"access_token\": \"a\"}", "expires_in missing or not a positive integer");
	assert_oauth_fails("{\"access_token\": \"a\", \"expires_in\": \"3600\"}",
			   "expires_in missing or not a positive integer");
	assert_oauth_fails("{\"access_token\": \"a\", \"expires_in\": 0}",
			   "expires_in missing or not a positive integer");
	assert_oauth_fails("{\"access_token\": \"a\", \"expires_in\": -60}",
			   "expires_in missing or not a positive integer");
	assert_oauth_fails("{\"access_token\": \"a\", \"expires_in\": 3600.5}",
			   "expires_in missing or not a positive integer");
	assert_oauth_fails("{\"access_token\": \"a\", \"expires_in\": 3600, \"token_type\": \"mac\"}",
			   "token_type is not Bearer");
	assert_oauth_fails("{\"access_token\": \"a\", \"expires_in\": 3600, \"token_type\": 1}",
			   "token_type is not Bearer");
}

/* ------------------------------------------------------------------ */
/* OIDC discovery */

static void
test_discovery_ok(void)
{
	struct lb_error err;
	char *url = NULL;
	const char *body = "{\"issuer\": \"https://h/oidc\", "
			   "\"token_endpoint\": \"https://h.example.com/oidc/v1/token\", "
			   "\"grant_types_supported\": [\"client_credentials\"]}";

	lb_error_clear(&err);
	CU_ASSERT_EQUAL(workspace_parse_discovery(body, strlen(body), &url, &err), 0);
	CU_ASSERT_STRING_EQUAL(url, "https://h.example.com/oidc/v1/token");
	free(url);
}

static void
test_discovery_malformed(void)
{
	assert_discovery_fails("", "answer is not JSON");
	assert_discovery_fails("{\"issuer\": \"x\"}", "token_endpoint missing or not a string");
	assert_discovery_fails("{\"token_endpoint\": true}", "token_endpoint missing or not a string");
	assert_discovery_fails("{\"token_endpoint\": \"ftp://h/token\"}", "token_endpoint is not an http(s) URL");
	assert_discovery_fails("{\"token_endpoint\": \"/oidc/v1/token\"}", "token_endpoint is not an http(s) URL");
}

/* ------------------------------------------------------------------ */
/* RFC 3339 */

static void
test_rfc3339_utc(void)
{
	CU_ASSERT_EQUAL(rfc3339("1970-01-01T00:00:00Z"), 0);
	CU_ASSERT_EQUAL(rfc3339("2026-01-02T03:04:05Z"), T_2026_01_02_030405);
	CU_ASSERT_EQUAL(rfc3339("2026-01-02t03:04:05z"), T_2026_01_02_030405);
	CU_ASSERT_EQUAL(rfc3339("2026-01-02T03:04:05+00:00"), T_2026_01_02_030405);
	CU_ASSERT_EQUAL(rfc3339("2026-01-02T03:04:05-00:00"), T_2026_01_02_030405);
}

static void
test_rfc3339_offsets(void)
{
	CU_ASSERT_EQUAL(rfc3339("2026-01-02T05:04:05+02:00"), T_2026_01_02_030405);
	CU_ASSERT_EQUAL(rfc3339("2026-01-01T22:04:05-05:00"), T_2026_01_02_030405);
	CU_ASSERT_EQUAL(rfc3339("2026-01-02T08:34:05+05:30"), T_2026_01_02_030405);
	CU_ASSERT_EQUAL(rfc3339("2026-01-02T03:04:05+23:59"), T_2026_01_02_030405 - 23 * 3600 - 59 * 60);
}

static void
test_rfc3339_fractions(void)
{
	/* fractions are truncated: an early expiry is the safe side */
	CU_ASSERT_EQUAL(rfc3339("2026-01-02T03:04:05.0Z"), T_2026_01_02_030405);
	CU_ASSERT_EQUAL(rfc3339("2026-01-02T03:04:05.999999Z"), T_2026_01_02_030405);
	CU_ASSERT_EQUAL(rfc3339("2026-01-02T03:04:05.123456789012+00:00"), T_2026_01_02_030405);
}

static void
test_rfc3339_calendar(void)
{
	CU_ASSERT_EQUAL(rfc3339("2024-02-29T00:00:00Z"), (time_t)1709164800);
	CU_ASSERT_EQUAL(rfc3339("2000-02-29T12:00:00Z"), (time_t)951825600);
	assert_not_rfc3339("2026-02-30T00:00:00Z");
	assert_not_rfc3339("2026-02-29T00:00:00Z");
	assert_not_rfc3339("2100-02-29T00:00:00Z");
	assert_not_rfc3339("2026-04-31T00:00:00Z");
	assert_not_rfc3339("2026-01-32T00:00:00Z");
	assert_not_rfc3339("2026-13-01T00:00:00Z");
	assert_not_rfc3339("2026-00-10T00:00:00Z");
	assert_not_rfc3339("2026-01-00T00:00:00Z");
	assert_not_rfc3339("2026-01-02T24:00:00Z");
	assert_not_rfc3339("2026-01-02T03:60:00Z");
	assert_not_rfc3339("2026-01-02T03:04:61Z");
}

static void
test_rfc3339_missing_parts(void)
{
	time_t t;

	assert_not_rfc3339("");
	assert_not_rfc3339("2026-01-02");
	assert_not_rfc3339("2026-01-02T03:04:05");		/* no zone */
	assert_not_rfc3339("2026-01-02T03:04Z");		/* no seconds */
	assert_not_rfc3339("2026-01-02 03:04:05Z");		/* space for T */
	assert_not_rfc3339("2026-1-02T03:04:05Z");		/* one-digit month */
	assert_not_rfc3339("26-01-02T03:04:05Z");
	assert_not_rfc3339("2026-01-02T03:04:05.Z");		/* empty fraction */
	assert_not_rfc3339("2026-01-02T03:04:05+0200");	/* offset without colon */
	assert_not_rfc3339("2026-01-02T03:04:05+02");
	assert_not_rfc3339("2026-01-02T03:04:05+24:00");
	assert_not_rfc3339("2026-01-02T03:04:05+02:60");
	assert_not_rfc3339("2026-01-02T03:04:05Z ");		/* trailing text */
	assert_not_rfc3339("2026-01-02T03:04:05ZZ");
	assert_not_rfc3339(" 2026-01-02T03:04:05Z");
	CU_ASSERT_EQUAL(parse_rfc3339(NULL, &t), -1);
}

/* ------------------------------------------------------------------ */
/* identities and secrets */

static void
test_identity_fingerprint(void)
{
	static const unsigned char sha256_abc[TOKEN_FP_LEN] = {
		0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
		0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad,
	};
	struct identity alice, other;

	identity_user(&alice, "alice@example.com", "abc");
	CU_ASSERT_EQUAL(alice.kind, IDENTITY_USER);
	CU_ASSERT_STRING_EQUAL(alice.email, "alice@example.com");
	CU_ASSERT_STRING_EQUAL(alice.workspace_token, "abc");
	CU_ASSERT_EQUAL(memcmp(alice.token_fp, sha256_abc, TOKEN_FP_LEN), 0);
	identity_user(&other, "alice@example.com", "abd");
	CU_ASSERT_NOT_EQUAL(memcmp(alice.token_fp, other.token_fp, TOKEN_FP_LEN), 0);
	identity_sp(&other);
	CU_ASSERT_EQUAL(other.kind, IDENTITY_SP);
	CU_ASSERT_PTR_NULL(other.email);
	CU_ASSERT_PTR_NULL(other.workspace_token);
}

static void
test_secret_release(void)
{
	struct credential cred;

	secret_free(NULL);
	secret_free(strdup("s3cr3t"));
	cred.token = strdup("pg-password");
	cred.role = strdup("alice@example.com");
	cred.expires_at = 5;
	credential_clear(&cred);
	CU_ASSERT_PTR_NULL(cred.token);
	CU_ASSERT_PTR_NULL(cred.role);
	CU_ASSERT_EQUAL(cred.expires_at, 0);
	credential_clear(&cred);	/* twice is harmless */
}

void
register_workspace_tests(void)
{
	CU_pSuite s = CU_add_suite("workspace", NULL, NULL);

	CU_add_test(s, "credential answer", test_credential_ok);
	CU_add_test(s, "credential answer: extra fields, offset, fraction", test_credential_extra_fields_and_offset);
	CU_add_test(s, "credential answer: length respected", test_credential_length_is_respected);
	CU_add_test(s, "credential answer: not JSON", test_credential_not_json);
	CU_add_test(s, "credential answer: nesting bounded", test_credential_too_deep);
	CU_add_test(s, "credential answer: token missing", test_credential_token_missing);
	CU_add_test(s, "credential answer: bad expire_time", test_credential_expire_time_bad);
	CU_add_test(s, "OAuth token answer", test_oauth_ok);
	CU_add_test(s, "OAuth token answer: malformed", test_oauth_malformed);
	CU_add_test(s, "OIDC discovery", test_discovery_ok);
	CU_add_test(s, "OIDC discovery: malformed", test_discovery_malformed);
	CU_add_test(s, "RFC 3339: UTC", test_rfc3339_utc);
	CU_add_test(s, "RFC 3339: offsets", test_rfc3339_offsets);
	CU_add_test(s, "RFC 3339: fractions", test_rfc3339_fractions);
	CU_add_test(s, "RFC 3339: calendar validation", test_rfc3339_calendar);
	CU_add_test(s, "RFC 3339: missing parts", test_rfc3339_missing_parts);
	CU_add_test(s, "identity: SHA-256 token fingerprint", test_identity_fingerprint);
	CU_add_test(s, "secrets released", test_secret_release);
}
