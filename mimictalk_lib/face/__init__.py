"""Face model and renderer conditioning: BFM-2009 3DMM, mesh and landmarks.

Everything that turns 3DMM coefficients (identity 80, expression 64, euler 3 in radians,
translation 3) into what the renderer consumes (architecture reference §1.5, §1.6, §5).

Face-model folder (``files``)
    ``check_face_model_files(folder, *, need_mp468=False) -> FaceModelFiles``
        Raises ``FaceModelMissingError`` listing every missing file, its purpose, its origin
        (Basel registration page and licence, Deep3DFaceRecon / Guo et al., the upstream authors'
        BFM folder) and the folder it goes in. Accepted layouts: ``BFM_model_front.mat``, or the six
        Basel/Deep3DFaceRecon source files (converted once, the result saved as
        ``BFM_model_front.mat``). ``index_mp468_from_mesh35709.npy`` is needed only for fitting.
        ``ncc_code.npy`` / ``bfm_{left,right}_eye_faces.npy`` (upstream MIT repo) are optional.

Face model (``model``)
    ``load_face_model(folder, *, need_mp468=False) -> FaceModel`` (CPU float32 ``nn.Module``
    of non-persistent buffers; ``.to(device, dtype)`` moves it).
    ``FaceModel.shape(id [..., 80], exp [..., 64]) -> [..., N, 3]`` canonical mesh (decimetres).
    ``FaceModel.points(id, exp, index [K]) -> [..., K, 3]`` selected vertices only.
    ``FaceModel.landmarks(id, exp, which="lm68_upstream") -> [..., K, 3]``; ``which`` is
    ``"lm68"`` (keypoints - 1, correct), ``"lm68_upstream"`` (the index set upstream's
    Face3DHelper uses for torso keypoints and lip crops: keypoints read without the - 1) or
    ``"mp468"`` (MediaPipe map, unmatched entries -> vertex 0, see ``FaceModel.mp468_matched``).
    ``FaceModel.project_landmarks(id, exp, euler, trans, which) -> [..., K, 2]`` in the 224-pixel
    fitting image, v axis up (what the landmark fitting compares with MediaPipe points whose y
    was flipped as ``224 - y``).
    ``euler_to_rotation(euler [..., 3]) -> [..., 3, 3]``: R = (Rz Ry Rx)^T, used as ``points @ R``.
    ``to_camera(points [..., K, 3], euler, trans, camera_distance=10) -> [..., K, 3]``.
    ``project(points_cam, focal=1015, center=112) -> [..., K, 2]``.
    Buffers: ``mean_shape`` (re-centred), ``id_base`` [3N, 80], ``exp_base`` [3N, 64], ``tri``,
    ``secc_tri`` (eye holes removed), ``eye_faces``, ``ncc`` [N, 3], ``lm68``, ``lm68_upstream``,
    ``mp468``, ``mp468_matched``.

Derived assets (``assets``)
    NCC colours: upstream's ``ncc_code.npy`` when present, else per-axis min-max of the mean shape
    (the shipped file has per-axis min 0 and max 1 exactly, consistent with this rule).
    Eye holes: upstream's lists when present, else triangles inside the 68-point eye contours
    (approximate). The 68-point map is the model's ``keypoints`` field; the MediaPipe map is a
    required file for fitting (it cannot be derived from the model).
"""

from .files import FaceModelFiles, check_face_model_files
from .model import FaceModel, euler_to_rotation, load_face_model, project, to_camera

__all__ = [
    "FaceModel",
    "FaceModelFiles",
    "check_face_model_files",
    "euler_to_rotation",
    "load_face_model",
    "project",
    "to_camera",
]
