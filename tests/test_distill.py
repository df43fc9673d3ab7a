"""bert_tf2.distill: a student learns an export's outputs, for every task, from labelled and
unlabeled text; its export has the teacher's contract; a resumed run reads the teacher's
labels instead of labelling again; bad input is refused before any training.

The teachers are tiny: the session's trained binary export (tiny_training_run), and exports of
the tiny encoder without dropout under a head of no training (`teacher_export`): what is tested
is that the student learns what the teacher says, whatever it says.
"""

import json
import pathlib

import bert_tf2  # noqa: F401
import numpy as np
import pytest

from bert_tf2 import cli, config, distill, predict
from tests import task_data, tiny_fixtures

TOPICS = task_data.TOPICS


def teacher_export(root: pathlib.Path, modules, texts, *, task: str, class_names,
                   pairs=False, head_scale: float = 3.0) -> str:
    """An export of the tiny encoder under a head of no training that tells `texts` apart:
    its logits are linear in the pooled outputs' first principal component x, standardized
    over `texts`: (-s x, 0.43 s, s x) for three classes (s = `head_scale`), so each class
    wins about a third of them and each decision has a margin that small changes of the
    encoder do not flip."""
    import tensorflow as tf
    from bert_tf2 import export, input_pipeline, model
    encoder = model.rebuild_encoder(modules.encoder, pooled_only=True)
    classifier = model.build_classifier(modules.encoder, encoder=encoder, task=task,
                                        num_classes=len(class_names))
    preprocessor = model.load_preprocessor(modules.preprocess)
    packer = input_pipeline.Packer(preprocessor, tiny_fixtures.TINY_SEQ_LENGTH)
    segments = [tf.constant(list(column)) for column in zip(*texts)] if pairs else [
        tf.constant(list(texts))]
    pooled = model.pooled_output_model(classifier)(
        packer.pack(packer.tokenize(segments)), training=False).numpy()
    mean = pooled.mean(axis=0)
    _, singular, directions = np.linalg.svd(pooled - mean, full_matrices=False)
    component = directions[0] / (singular[0] / np.sqrt(len(pooled)))  # x = (p - mean) . it
    scales = np.array([-head_scale, 0.0, head_scale])
    kernel = np.outer(component, scales)
    classifier.get_layer("classifier").set_weights(
        [kernel, -mean @ kernel + np.where(scales == 0, 0.43 * head_scale, 0.0)])
    text_classifier = model.build_text_classifier(
        preprocessor, classifier, seq_length=tiny_fixtures.TINY_SEQ_LENGTH, pairs=pairs)
    return export.export_text_classifier(text_classifier, str(root), task=task,
                                         class_names=class_names, pairs=pairs)


def write_jsonl(path: pathlib.Path, rows) -> str:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                    encoding="utf-8")
    return str(path)


def distill_args(modules, root: pathlib.Path, teacher: str, *extra: str):
    return [*tiny_fixtures.tiny_train_args(modules, root / "model", root / "export"),
            f"--teacher={teacher}", "--student_num_layers=1", *tiny_fixtures.FIXED_SHAPE_ARGS,
            *extra]


@pytest.fixture(scope="module")
def texts(corpus_splits):
    return task_data.rows(corpus_splits, "train", 256)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, dropout_free_modules, texts):
    """A multi-class teacher of pairs and a multi-label one, decisive on `task_rows`' texts,
    over the tiny encoder without dropout."""
    root = tmp_path_factory.mktemp("teachers")
    return {
        "multiclass": teacher_export(root / "multiclass", dropout_free_modules,
                                     list(zip(texts[:128], texts[128:])), task="multiclass",
                                     class_names=sorted(TOPICS), pairs=True),
        "multilabel": teacher_export(root / "multilabel", dropout_free_modules, texts[:96],
                                     task="multilabel", class_names=sorted(TOPICS)),
    }


def task_rows(task: str, texts):
    """Training rows of `task`, and the flags that read them."""
    if task == "multiclass":  # of pairs
        return ([{"q1": a, "q2": b, "label": TOPICS[i % 3]}
                 for i, (a, b) in enumerate(zip(texts[:128], texts[128:]))],
                ["--text_column=q1", "--text_b_column=q2"])
    return [{"text": text, "label": "|".join(TOPICS[:i % 3 + 1])}
            for i, text in enumerate(texts[:96])], []


def assert_served_like(student: predict.Predictor, teacher: predict.Predictor, texts):
    """The student's export has the teacher's contract and outputs of the same shapes."""
    assert (student.task, student.pairs, student.class_names) == (
        teacher.task, teacher.pairs, teacher.class_names)
    items = list(zip(texts[:5], texts[5:10])) if teacher.pairs else texts[:5]
    assert [output.shape for output in student(items)] == [
        output.shape for output in teacher(items)]
    signatures = [set(model.loaded.signatures) for model in (student, teacher)]
    assert signatures[0] == signatures[1] >= {"serving_default", "classify"}


def test_a_student_with_the_teachers_layers_learns_its_outputs(teachers, dropout_free_modules,
                                                               texts, tmp_path):
    """The teacher's decisions ride on small differences of its pooled outputs, which dropout
    would drown: the student is its encoder module, without dropout, as the teacher was.

    The student starts from the teacher's head over the same encoder, so what is checked is
    that the loss holds it at the teacher's outputs: its minimum is there. (Adam's steps at a
    minimum are noise of about the learning rate's size: a small one keeps that noise from
    moving the near-tied rows.)"""
    rows, reading = task_rows("multiclass", texts)
    train_file = write_jsonl(tmp_path / "train.jsonl", rows)
    result = distill.run(tiny_fixtures.distill_config(
        *distill_args(dropout_free_modules, tmp_path, teachers["multiclass"],
                      f"--train_data={train_file}", "--task=multiclass", *reading,
                      f"--student_encoder={dropout_free_modules.encoder}", "--dropout=0",
                      "--hard_label_weight=0", "--temperature=1", "--train_steps=30",
                      "--learning_rate=5e-5")))
    pairs = [(row["q1"], row["q2"]) for row in rows]
    teacher = predict.Predictor(teachers["multiclass"])
    student = predict.Predictor(result.export_path)
    teacher_ids, student_ids = teacher(pairs)[1], student(pairs)[1]
    assert len(set(teacher_ids)) == 3  # the teacher says every class
    assert (teacher_ids == student_ids).mean() >= 0.99
    assert_served_like(student, teacher, texts)


def test_a_multilabel_student_starts_from_the_teachers_layers_and_exports(
        teachers, dropout_free_modules, texts, tmp_path):
    import tensorflow as tf
    from bert_tf2 import export
    rows, reading = task_rows("multilabel", texts)
    train_file = write_jsonl(tmp_path / "train.jsonl", rows)
    result = distill.run(tiny_fixtures.distill_config(
        *distill_args(dropout_free_modules, tmp_path, teachers["multilabel"],
                      f"--train_data={train_file}", "--task=multilabel", "--train_steps=2",
                      *reading)))
    assert result.optimizer_steps == 2
    teacher = predict.Predictor(teachers["multilabel"])
    assert_served_like(predict.Predictor(result.export_path), teacher, texts)
    module = tf.saved_model.load(str(tmp_path / "model" / distill.STUDENT_ENCODER))
    teacher_weights = {v.name: v.numpy() for v in export.weights_of(teacher.loaded, "")}
    assert len(module.variables) > 20
    for variable in module.variables:
        if variable.dtype.is_floating:
            np.testing.assert_array_equal(variable.numpy(), teacher_weights[variable.name])


@pytest.fixture(scope="module")
def unlabeled_files(tmp_path_factory, texts):
    root = tmp_path_factory.mktemp("unlabeled")
    (root / "reviews.txt").write_text("\n".join(texts[:4]) + "\n\n", encoding="utf-8")
    (root / "reviews.csv").write_text("id,text\n" + "".join(
        f'{i},"{text}"\n' for i, text in enumerate(texts[4:7])), encoding="utf-8")
    (root / "reviews.tsv").write_text("text\n" + "\n".join(texts[7:9]) + "\n", encoding="utf-8")
    write_jsonl(root / "reviews.jsonl", [{"text": text} for text in texts[9:12]])
    return root


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, tiny_training_run, tiny_hub_modules, unlabeled_files, texts):
    """A distillation of the trained binary export with unlabeled text in every format (two
    of whose texts are test texts), crashed after its step-2 backup and run again with
    labelling made to fail."""
    root = tmp_path_factory.mktemp("resumed")
    train_file = pathlib.Path(tiny_training_run["model_dir"]).parent / "train.jsonl"
    test_file = write_jsonl(root / "test.jsonl", [
        {"text": text, "label": i % 2}
        for i, text in enumerate([texts[2], f"  {texts[5]} ", *texts[200:218]])])
    run_config = tiny_fixtures.distill_config(*distill_args(
        tiny_hub_modules, root, tiny_training_run["export_dir"], f"--train_data={train_file}",
        f"--test_data={test_file}",
        f"--unlabeled_data={unlabeled_files}/reviews.txt,{unlabeled_files}/*.?sv,"
        f"{unlabeled_files}/reviews.jsonl", "--train_steps=4", "--checkpoint_steps=2"))
    with pytest.raises(tiny_fixtures.Crash):
        distill.run(run_config, callbacks=[tiny_fixtures.CrashAtStep(3)])
    labels = json.loads((root / "model" / distill.TEACHER_LABELS_FILE).read_text("utf-8"))

    def no_labelling(*args, **kwargs):
        raise AssertionError("the resumed run labelled the texts again")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(distill, "label", no_labelling)
        result = distill.run(run_config)
    return {"config": run_config, "labels": labels, "result": result, "root": root}


def test_unlabeled_text_of_every_format_is_labelled_once_and_resumed_on(resumed_run,
                                                                       tiny_training_run,
                                                                       texts):
    labels = resumed_run["labels"]
    assert labels["texts"] == 160 + 10  # the blank line and the two test texts left out
    assert np.asarray(labels["probabilities"]).shape == (170, 1)
    result = resumed_run["result"]
    metrics = json.loads((resumed_run["root"] / "model" / "metrics.json").read_text("utf-8"))
    assert metrics[distill.UNLABELED_METRICS] == {"texts": 10, "dropped_dev_test_texts": 2}
    assert metrics["test"]["examples"] == 20
    assert result.metrics == metrics
    assert result.optimizer_steps == 4
    assert result.backed_up_steps == ()  # steps 3 and 4 trained after the step-2 backup
    assert_served_like(predict.Predictor(result.export_path),
                       predict.Predictor(tiny_training_run["saved_model"]), texts)


def test_a_distillation_reruns_from_its_run_config_and_train_refuses_it(resumed_run):
    path = resumed_run["root"] / "model" / config.RUN_CONFIG_FILE
    rerun = tiny_fixtures.distill_config(f"--run_config={path}")
    assert rerun == resumed_run["result"].config
    assert rerun.distill.teacher == resumed_run["config"].distill.teacher
    with pytest.raises(cli.UserError, match="bert_tf2.distill"):
        config.load(str(path))


@pytest.mark.parametrize("case", ["not_an_export", "other_task", "bad_unlabeled_row",
                                  "export_over_the_teacher", "unlabeled_test_file",
                                  "renamed_copy_of_the_test_file", "unlabeled_builtin_dev_texts",
                                  "width_the_heads_do_not_divide"])
def test_bad_input_is_refused_in_one_line_before_training(case, teachers, tiny_training_run,
                                                          tiny_hub_modules, corpus_splits,
                                                          tmp_path):
    train_file = write_jsonl(tmp_path / "train.jsonl", [{"text": "很好", "label": 1}] * 32)
    bad = write_jsonl(tmp_path / "unlabeled.jsonl", [{"text": "很好"}])
    with open(bad, "a", encoding="utf-8") as f:
        f.write("{not json\n")
    test_texts = [f"第{i}条测试评论" for i in range(10)]
    test_file = write_jsonl(tmp_path / "test.jsonl",
                            [{"text": text, "label": i % 2} for i, text in enumerate(test_texts)])
    (tmp_path / "copy").mkdir()
    copy = task_data.write(tmp_path / "copy" / "reviews_2026.csv",
                           ["id,text", *(f"{i},{text}" for i, text in enumerate(test_texts))]
                           + ["10,一条新评论"])
    builtin_dev = task_data.write(tmp_path / "copy" / "more.jsonl", [
        json.dumps({"text": text}, ensure_ascii=False)
        for text in [*corpus_splits["dev"].texts[:3], "一条新评论", "又一条"]])
    teacher, extra, expected = {
        "not_an_export": (tiny_hub_modules.encoder, [], "--teacher: .* not a text classifier"),
        "other_task": (teachers["multilabel"], [], "multilabel classifier.*--task=binary"),
        "bad_unlabeled_row": (tiny_training_run["saved_model"], [f"--unlabeled_data={bad}"],
                              "unlabeled.jsonl:2"),
        "export_over_the_teacher": (
            tiny_training_run["saved_model"],
            [f"--export_dir={pathlib.Path(tiny_training_run['saved_model']).parent}"],
            "holds the teacher .* pass another --export_dir$"),
        "unlabeled_test_file": (
            tiny_training_run["saved_model"],
            [f"--test_data={train_file}", f"--unlabeled_data={tmp_path / '*.jsonl'}"],
            "train.jsonl is the --test_data file: .* leave it out of --unlabeled_data$"),
        "renamed_copy_of_the_test_file": (
            tiny_training_run["saved_model"],
            [f"--test_data={test_file}", f"--unlabeled_data={tmp_path / 'copy' / '*.csv'}"],
            r"reviews_2026\.csv: 10 of its 11 texts are dev/test texts \(10 of the test "
            r"split\): a copy of a split the student is scored on; leave it out"),
        "unlabeled_builtin_dev_texts": (
            tiny_training_run["saved_model"], [f"--unlabeled_data={builtin_dev}"],
            r"more\.jsonl: 3 of its 5 texts are dev/test texts \(3 of the dev split\)"),
        "width_the_heads_do_not_divide": (
            tiny_training_run["saved_model"], ["--student_hidden_size=99"],
            r"^--student_hidden_size=99: the student keeps the teacher's 2 attention heads, "
            r"which split the hidden size evenly; pass a multiple of 2, e.g. 98 or 100$"),
    }[case]
    data_args = ([] if case == "unlabeled_builtin_dev_texts" else
                 [f"--train_data={train_file}"])  # the built-in corpus's splits
    with pytest.raises(cli.UserError, match=expected) as error:
        distill.run(tiny_fixtures.distill_config(
            *distill_args(tiny_hub_modules, tmp_path, teacher, *data_args, *extra)))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("flag, expected", [
    ("--temperature=0", "--temperature=0.0 is out of range: it must be > 0"),
    ("--hard_label_weight=1.5", "--hard_label_weight=1.5 is out of range"),
])
def test_loss_settings_out_of_range_are_refused(flag, expected):
    with pytest.raises(cli.UserError, match=expected):
        tiny_fixtures.distill_config("--model_dir=m", "--teacher=t", flag)


def test_a_student_starts_from_every_kth_teacher_layer_from_the_bottom():
    assert distill.teacher_layers(12, 4) == [0, 3, 6, 9]
    assert distill.teacher_layers(12, 3) == [0, 4, 8]
    assert distill.teacher_layers(2, 1) == [0]
    assert distill.teacher_layers(2, 2) == [0, 1]


def test_a_distillation_run_config_is_its_own_kind(tmp_path):
    distilled = tiny_fixtures.distill_config("--model_dir=m", "--teacher=t",
                                             "--student_num_layers=3", "--temperature=2")
    path = tmp_path / config.RUN_CONFIG_FILE
    path.write_text(distilled.to_json(), encoding="utf-8")
    assert config.load(str(path), config.DistillConfig) == distilled
    assert tiny_fixtures.distill_config(f"--run_config={path}") == distilled
    with pytest.raises(cli.UserError, match="a run of bert_tf2.distill"):
        tiny_fixtures.train_config(f"--run_config={path}")


def test_the_loss_is_the_soft_term_alone_on_unlabeled_rows_and_mixed_on_labelled_ones():
    import tensorflow as tf
    loss = distill.DistillationLoss("multiclass", 3, temperature=2.0, hard_label_weight=0.25)
    student = tf.constant([[0.2, 0.5, 0.3], [0.2, 0.5, 0.3]])
    teacher = [0.1, 0.1, 0.8]
    rows = tf.constant([[1.0, 0.0, 0.0, *teacher, 1.0], [1.0, 0.0, 0.0, *teacher, 0.0]])
    labelled, unlabeled = loss.call(rows, student).numpy()
    soften = lambda p: np.exp(np.log(p) / 2) / np.exp(np.log(p) / 2).sum()  # noqa: E731
    soft = -(soften(np.array(teacher)) * np.log(soften(np.array([0.2, 0.5, 0.3])))).sum() * 4
    hard = -np.log(0.2)
    np.testing.assert_allclose(unlabeled, soft, rtol=1e-5)
    np.testing.assert_allclose(labelled, 0.25 * hard + 0.75 * soft, rtol=1e-5)
    integer_labels = loss.call(tf.constant([[0], [1]]), student).numpy()
    np.testing.assert_allclose(integer_labels, [-np.log(0.2), -np.log(0.5)], rtol=1e-5)
