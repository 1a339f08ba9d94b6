"""The patches of PromptRequestWorkflow (workflows/lifecycle.py): each id names a change of its
command sequence, and what runs started before it do instead (they replay as they ran). No
Temporal here: the workflow asks them.
"""

# Planning retries a model endpoint that does not answer itself, so the status can say so
# (workflow.patched: runs planning across the rollout keep retrying inside the activity).
MODEL_UNAVAILABLE_PATCH = "model-unavailable-ends-planning"
# Patch id: a cancellation also releases holds the run never learnt of (histories recorded
# before it replay without the step).
RELEASE_FORGOTTEN_HOLDS = "release-forgotten-holds"
# Decisions verified by an activity before they count (workflow.patched: runs waiting for
# approval across the rollout replay their earlier decisions unverified).
VERIFIED_DECISIONS_PATCH = "verified-decisions"
# Patch ids: a conflict with the default branch plans the request again (runs before it
# failed); a moving default branch never fails a request unless outside pushes move it (runs
# before it gave up after MAX_REBASE_ROUNDS applies).
REPLAN_ON_CONFLICT = "replan-on-conflict"
SHIP_UNTIL_SHIPPED = "ship-until-shipped"
# Patch id: a plan that changes what verifies it is never approved by the system.
NEVER_AUTO_APPROVE_OWN_VERIFICATION = "never-auto-approve-own-verification"
# Patch: the run holds the decision keys (loaded before planning) and its validators judge a
# decision's token, so a refusal leaves no trace; runs started before it judge in the handler.
JUDGED_BY_VALIDATORS_PATCH = "decisions-judged-by-validators"
# Patch id: a cancel that reaches a request whose production release is verified is refused
# (the request completes), and a cancelled request's succeeded staging release is undone.
CANCEL_NEVER_LIVE = "cancel-never-live"
# Patch id: an accepted cancel decision stops the request's release in flight at once and no
# other starts; its answer waits for a production release to stop or ship, so that a cancel
# the client was told is accepted never leaves the change live (runs before it let production
# verify until Temporal's cancel arrived).
AUTHORIZED_CANCEL_STOPS_RELEASES = "authorized-cancel-stops-releases"
# Patch id: an approval or rejection is verified and recorded by one local activity, one
# decision of the plan at a time (runs before it verified, then recorded, in two).
ONE_DECISION_STEP = "one-decision-step"
# The patches of this release, asked once at the start of a run, before its first local activity:
# a patch marker recorded after a local activity that resolved in the same workflow task fails
# replay ("patch marker encountered ... but there is no corresponding change command"; seen with
# the model-unavailable patch asked after decision_trust).
# Patch id: an ended request's branch `changeflow/<id>` is deleted (they used to accumulate).
CLOSE_REQUEST_BRANCH = "close-request-branch"
# Patch id: a project with a `github` connector ships each request as a pull request: opened
# (updated by a revision) after each apply, verified by the tenant's checks as GitHub
# Deployments, merged by production, closed and its branch deleted when the request ends; a
# pull request closed by a person cancels the request. Runs before it know nothing of GitHub.
GITHUB_PULL_REQUESTS = "github-pull-requests"
# Patch id: Temporal's cancel reaches the request only while it can still be cancelled; one that
# comes too late by the rule `authorize_cancel` refuses by (production verified, or told to merge
# its pull request) is not obeyed and the request ends as it would have, its reason saying so.
# Runs before it obeyed one that came while production merged, the merge staying on GitHub.
CANCEL_OBEYED_WHILE_TIMELY = "cancel-obeyed-while-timely"
RUN_START_PATCHES = (
    AUTHORIZED_CANCEL_STOPS_RELEASES,
    ONE_DECISION_STEP,
    CANCEL_NEVER_LIVE,
    JUDGED_BY_VALIDATORS_PATCH,
    SHIP_UNTIL_SHIPPED,
    MODEL_UNAVAILABLE_PATCH,
    NEVER_AUTO_APPROVE_OWN_VERIFICATION,
    REPLAN_ON_CONFLICT,
    CLOSE_REQUEST_BRANCH,
    GITHUB_PULL_REQUESTS,
    CANCEL_OBEYED_WHILE_TIMELY,
)
