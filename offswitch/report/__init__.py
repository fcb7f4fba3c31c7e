"""Reports: a person reads the Markdown or HTML, a program reads the versioned JSON.

Two reports live here:

- ``check`` (:mod:`.check`): the Markdown of ``offswitch check`` (one implanted model's
  metrics, docs/evaluation.md).
- the robustness report of an attack run (``offswitch report RESULTS``), in the order data
  flows through it:

  ``schema``    read and validate suite.json / results.jsonl / samples.jsonl into typed values
  ``summary``   verdicts (per point, per attack, per arm), the attack × arm matrix, seeds
  ``findings``  what each attack found besides activation, as short sentences
  ``samples``   sample prompt → reply pairs as shown (commands shortened)
  ``plots``     matplotlib SVG plots (only those with data)
  ``document``  the page's blocks in reading order, shared by
  ``markdown``  report.md and
  ``html``      report.html (self-contained, plots inline, no script)
  ``robustness``  the entry points: ``build_report``, ``write_report``
"""
