"""Export to TF Hub SavedModels and import of the authors' released models."""
from simclr_tf2.export.hub import (ExportError, build_hub_module, export_hub_modules,
                                   exported_steps, load_hub_module, read_export_metadata)
from simclr_tf2.export.official import (ImportReport, OfficialImportError,
                                        import_official_variables, infer_model_config,
                                        load_official_savedmodel)
