-- Approvals are looked up by the request they bind, on every denial an
-- approvable rule makes.
CREATE INDEX tollgate_approvals_request ON tollgate_approvals (operation, path, caller, status);
