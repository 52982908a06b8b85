"""Pascal VOC XML (as LabelImg writes it) and image checks: pure functions, no output files.

Every problem becomes an `issues.Issue(code, severity, message, fix, object)`; `object` is the
0-based index of the <object> element in the XML (e.g. BloodImage_00338 object 12 of BCCD has a
zero-area box), or None for file-level issues. `voc` parses XML safely, `boxes` applies the box and
class-name policy, `images` decodes and identifies images; `validate` applies them to folders.
"""
