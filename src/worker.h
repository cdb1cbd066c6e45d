/*
 * worker.h - the request path: one FastCGI request in, one response out.
 *
 * A worker owns the per-process state every thread shares: the workspace
 * client, the credential cache and the service-principal pool, plus a
 * maintenance thread that reaps idle connections off the request path.
 * worker_handle() reads top to bottom: route, identity, parameters, pool,
 * SQL, result, response.
 */
#ifndef LB_WORKER_H
#define LB_WORKER_H

#include "config.h"
#include "error.h"
#include "request.h"

struct worker;

struct worker *worker_create(const struct lb_config *cfg, struct lb_error *err);
/* Stops the maintenance thread and closes every pool. */
void worker_destroy(struct worker *w);

void worker_handle(struct worker *w, struct http_request *req, struct http_response *resp);
/* Answers a request that could not be read (bad length, body too large). */
void worker_reject(struct worker *w, struct http_request *req, const struct lb_error *err,
		   struct http_response *resp);

#endif
