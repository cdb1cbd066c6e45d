/*
 * httpscost.c - what one HTTPS call to the workspace costs the worker's
 * libcurl, with a fresh easy handle per call (a new connection, and the CA
 * file parsed again) against one kept handle reset between calls (its
 * connection reused), the two ways src/workspace.c could make its calls.
 *
 *   httpscost --url URL --cafile FILE [--count N]
 *
 * Prints, per way, the CPU time (user + system) and wall time per call.
 * Driven by bench/https.sh, which starts the TLS server.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static size_t
discard(char *data, size_t size, size_t n, void *ctx)
{
	(void)data;
	(void)ctx;
	return size * n;
}

static double
cpu_seconds(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
	       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static double
wall_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One call on `curl`, set up as the worker sets up a POST. */
static int
call(CURL *curl, const char *url, const char *cafile)
{
	static const char body[] = "{\"endpoint\": \"projects/p/branches/b/endpoints/e\"}";
	CURLcode rc;
	long status = 0;

	curl_easy_setopt(curl, CURLOPT_URL, url);
	curl_easy_setopt(curl, CURLOPT_CAINFO, cafile);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, discard);
	curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)(sizeof(body) - 1));
	curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
	rc = curl_easy_perform(curl);
	if (rc == CURLE_OK)
		curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
	if (rc != CURLE_OK || status != 200) {
		fprintf(stderr, "httpscost: %s (HTTP %ld)\n", curl_easy_strerror(rc), status);
		return -1;
	}
	return 0;
}

static int
measure(const char *way, const char *url, const char *cafile, int count)
{
	CURL *kept = NULL, *curl;
	double cpu0, wall0;
	int i, rc = 0;

	if (strcmp(way, "kept") == 0 && (kept = curl_easy_init()) == NULL)
		return -1;
	cpu0 = cpu_seconds();
	wall0 = wall_seconds();
	for (i = 0; i < count && rc == 0; i++) {
		curl = kept != NULL ? kept : curl_easy_init();
		if (curl == NULL)
			return -1;
		rc = call(curl, url, cafile);
		if (kept != NULL)
			curl_easy_reset(curl);
		else
			curl_easy_cleanup(curl);
	}
	if (rc == 0)
		printf("%s cpu_us_per_call=%.0f wall_us_per_call=%.0f\n", way,
		       (cpu_seconds() - cpu0) * 1e6 / count, (wall_seconds() - wall0) * 1e6 / count);
	if (kept != NULL)
		curl_easy_cleanup(kept);
	return rc;
}

int
main(int argc, char **argv)
{
	const char *url = NULL, *cafile = NULL;
	int count = 50, i, rc;

	for (i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--url") == 0)
			url = argv[i + 1];
		else if (strcmp(argv[i], "--cafile") == 0)
			cafile = argv[i + 1];
		else if (strcmp(argv[i], "--count") == 0)
			count = atoi(argv[i + 1]);
	}
	if (url == NULL || cafile == NULL || count < 1 || i != argc) {
		fprintf(stderr, "usage: httpscost --url URL --cafile FILE [--count N]\n");
		return 2;
	}
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		return 1;
	rc = measure("fresh", url, cafile, count) == 0 && measure("kept", url, cafile, count) == 0 ? 0 : 1;
	curl_global_cleanup();
	return rc;
}
