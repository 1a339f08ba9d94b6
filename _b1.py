import asyncio, time, tests  # bytecode cache
from temporalio import workflow
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions
from workers.registry import workflows
defs = [workflow._Definition.must_from_class(c) for c in workflows()]
async def main():
    r = SandboxedWorkflowRunner()
    tot=0
    for d in defs:
        t=time.process_time()
        for _ in range(5): r.prepare_workflow(d)
        dt=(time.process_time()-t)/5*1000; tot+=dt
        print(d.name, dt, "ms")
    print("total", tot)
asyncio.run(main())
