"""pytest configuration shared by the unit tests and the notebooks.

nbval compares stdout and stderr alike. A chapter's stderr holds progress bars and library
warnings, which differ from one run to the next and are not what the chapter teaches, so it
is left out of the comparison: on both sides, the committed outputs and the fresh run's.
Errors are separate outputs (``output_type: error``) and are still compared.
"""

import nbval.plugin

_coalesce_streams = nbval.plugin.coalesce_streams


def _coalesce_streams_without_stderr(outputs):
    outputs = _coalesce_streams(outputs)
    if not outputs:
        return outputs
    return [o for o in outputs if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]


nbval.plugin.coalesce_streams = _coalesce_streams_without_stderr
