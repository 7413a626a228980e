"""Word lists the synthetic catalog is composed from.

Real generic stems, herbs and company names give the catalog its look; syllable tables let it
grow to a million items with plausible, distinct but confusable names (real catalogs are full
of names one character apart, e.g. 厄贝沙坦 / 缬沙坦 / 坎地沙坦).
"""

from __future__ import annotations

from typing import Final


def _words(s: str) -> tuple[str, ...]:
    """Space-separated words; "-" stands for the empty string (an optional part left out)."""
    return tuple("" if w == "-" else w for w in s.split())


def _pairs(s: str) -> tuple[tuple[str, str], ...]:
    return tuple((a, b) for a, b in (w.split("/") for w in s.split()))


def _triples(s: str) -> tuple[tuple[str, str, str], ...]:
    return tuple((a, b, c) for a, b, c in (w.split("/") for w in s.split()))


# (stem, ATC group) of real western generic names.
WESTERN_STEMS: Final[tuple[tuple[str, str], ...]] = _pairs(
    "阿莫西林/J01CA 氨苄西林/J01CA 哌拉西林/J01CA 头孢克肟/J01DD 头孢呋辛/J01DC "
    "头孢曲松/J01DD 头孢他啶/J01DD 头孢唑林/J01DB 头孢克洛/J01DC 左氧氟沙星/J01MA "
    "莫西沙星/J01MA 环丙沙星/J01MA 阿奇霉素/J01FA 克拉霉素/J01FA 红霉素/J01FA 甲硝唑/J01XD "
    "美罗培南/J01DH 万古霉素/J01XA 奥美拉唑/A02BC 泮托拉唑/A02BC 雷贝拉唑/A02BC "
    "兰索拉唑/A02BC 艾司奥美拉唑/A02BC 法莫替丁/A02BA 雷尼替丁/A02BA 二甲双胍/A10BA "
    "格列美脲/A10BB 格列齐特/A10BB 阿卡波糖/A10BF 西格列汀/A10BH 氨氯地平/C08CA "
    "硝苯地平/C08CA 非洛地平/C08CA 缬沙坦/C09CA 厄贝沙坦/C09CA 氯沙坦/C09CA 替米沙坦/C09CA "
    "坎地沙坦/C09CA 依那普利/C09AA 贝那普利/C09AA 卡托普利/C09AA 美托洛尔/C07AB "
    "比索洛尔/C07AB 阿替洛尔/C07AB 阿托伐他汀/C10AA 瑞舒伐他汀/C10AA 辛伐他汀/C10AA "
    "普伐他汀/C10AA 阿司匹林/B01AC 氯吡格雷/B01AC 华法林/B01AA 依诺肝素/B01AB 布洛芬/M01AE "
    "双氯芬酸/M01AB 塞来昔布/M01AH 对乙酰氨基酚/N02BE 地塞米松/H02AB 泼尼松/H02AB "
    "甲泼尼龙/H02AB 氢化可的松/H02AB 氨溴索/R05CB 孟鲁司特/R03DC 氯雷他定/R06AX "
    "西替利嗪/R06AE 维生素C/A11GA 维生素B6/A11HA 维生素B12/B03BA 甲钴胺/B03BA 奥司他韦/J05AH "
    "阿昔洛韦/J05AB 利巴韦林/J05AP 呋塞米/C03CA 螺内酯/C03DA 氢氯噻嗪/C03AA 多潘立酮/A03FA "
    "蒙脱石/A07BC 阿托品/A03BA 山莨菪碱/A03BA 硝酸甘油/C01DA 单硝酸异山梨酯/C01DA "
    "氟康唑/J02AC 伏立康唑/J02AC 舍曲林/N06AB 帕罗西汀/N06AB 奥氮平/N05AH 利培酮/N05AX "
    "地西泮/N05BA 艾司唑仑/N05CD 卡马西平/N03AF 丙戊酸/N03AG 左乙拉西坦/N03AX 多奈哌齐/N06DA "
    "坦索罗辛/G04CA 非那雄胺/G04CB 甲氨蝶呤/L01BA 紫杉醇/L01CD 吉非替尼/L01EB 伊马替尼/L01EA "
    "胰岛素/A10AB 肝素/B01AB"
)

# Salt and ester prefixes (盐酸二甲双胍) and suffixes (头孢曲松钠).
SALT_PREFIXES: Final[tuple[str, ...]] = _words(
    "盐酸 硫酸 马来酸 富马酸 琥珀酸 枸橼酸 甲磺酸 苯磺酸 磷酸 醋酸"
)

SALT_SUFFIXES: Final[tuple[str, ...]] = _words("钠 钾 钙")

# Syllables that start western generic names, and class endings with their ATC group.
SYLLABLES: Final[str] = (
    "阿艾奥贝比苄布达地多厄恩法非伏氟福格环吉加卡坎克拉来兰雷利氯罗洛马美米莫那奈尼诺"
    "帕哌泼齐曲瑞塞沙舍索他坦特替托维西昔缬伊依扎佐"
)

CLASS_ENDINGS: Final[tuple[tuple[str, str], ...]] = _pairs(
    "沙星/J01MA 西林/J01CA 霉素/J01FA 培南/J01DH 拉唑/A02BC 替丁/A02BA 地平/C08CA 沙坦/C09CA "
    "普利/C09AA 洛尔/C07AB 他汀/C10AA 格列汀/A10BH 康唑/J02AC 昔洛韦/J05AB 昔布/M01AH "
    "洛芬/M01AE 米松/H02AB 司特/R03DC 他定/R06AX 替尼/L01EX 单抗/L01FX 唑仑/N05CD 西汀/N06AB "
    "哌酮/N05AX 肝素/B01AB"
)

# Western dosage forms: (name suffix, dosage_form column, spec group). A suffix starting with
# "注射用" is a prefix form (注射用头孢曲松钠).
WESTERN_FORMS: Final[tuple[tuple[str, str, str], ...]] = _triples(
    "片/片剂/tablet 片/片剂/tablet 片/片剂/tablet 肠溶片/肠溶片/tablet 缓释片/缓释片/tablet "
    "分散片/片剂/tablet 胶囊/胶囊剂/capsule 胶囊/胶囊剂/capsule 软胶囊/胶囊剂/capsule "
    "肠溶胶囊/胶囊剂/capsule 颗粒/颗粒剂/granule 注射液/注射剂/injection "
    "注射液/注射剂/injection 注射用/注射剂/powder 注射用/注射剂/powder "
    "口服溶液/口服溶液剂/liquid 干混悬剂/干混悬剂/granule 滴眼液/滴眼剂/eye 乳膏/乳膏剂/cream "
    "气雾剂/气雾剂/spray"
)

# Chinese patent medicines: real stems, and parts to compose more.
CPM_STEMS: Final[tuple[str, ...]] = _words(
    "六味地黄 板蓝根 复方丹参 连花清瘟 藿香正气 银翘解毒 牛黄解毒 感冒清热 逍遥 补中益气 "
    "附子理中 香砂养胃 小柴胡 双黄连 清开灵 速效救心 血塞通 脑心通 通心络 复方甘草 川贝枇杷 "
    "健胃消食 保和 归脾 知柏地黄 杞菊地黄 桂枝茯苓 乌鸡白凤 益母草 麝香保心 穿心莲 蒲地蓝消炎 "
    "银黄 黄连上清 三九胃泰 气滞胃痛 养血清脑 天麻钩藤 强力枇杷 急支 肺力咳 苏黄止咳 百令 "
    "金水宝 雷公藤多苷 正清风痛宁 独一味 腰痛宁 丹七 复方血栓通"
)

CPM_MODIFIERS: Final[tuple[str, ...]] = _words("- - - 复方 加味 强力 小儿 妇科")

CPM_FUNCTIONS: Final[tuple[str, ...]] = _words(
    "清热 解毒 止咳 养血 安神 活血 通络 健脾 补肾 益气 舒肝 和胃 消炎 止痛 祛风 化痰 平喘 "
    "明目 降脂 养心"
)

# (name suffix, dosage_form column, spec group)
CPM_FORMS: Final[tuple[tuple[str, str, str], ...]] = _triples(
    "丸/丸剂/pill 水丸/丸剂/pill 滴丸/滴丸剂/pill 片/片剂/tablet 片/片剂/tablet "
    "胶囊/胶囊剂/capsule 胶囊/胶囊剂/capsule 颗粒/颗粒剂/granule 颗粒/颗粒剂/granule "
    "口服液/合剂/liquid 合剂/合剂/liquid 糖浆/糖浆剂/liquid 贴膏/贴膏剂/plaster "
    "注射液/注射剂/injection"
)

HERBS: Final[tuple[str, ...]] = _words(
    "黄芪 当归 党参 白术 茯苓 甘草 川芎 白芍 熟地黄 生地黄 柴胡 黄芩 黄连 黄柏 金银花 连翘 "
    "板蓝根 丹参 红花 桃仁 枸杞子 山药 陈皮 半夏 厚朴 枳壳 木香 砂仁 麦冬 天冬 五味子 酸枣仁 "
    "远志 石菖蒲 菊花 薄荷 桑叶 葛根 防风 荆芥 羌活 独活 杜仲 牛膝 续断 桑寄生 山茱萸 泽泻 "
    "牡丹皮 知母 石膏 大黄 附子 干姜 肉桂 桂枝 麻黄 苦杏仁 桔梗 川贝母 浙贝母 百合 玉竹 黄精 "
    "何首乌 阿胶 人参 西洋参 三七 天麻 钩藤 全蝎 蜈蚣 地龙 僵蚕 蝉蜕 牡蛎 龙骨 珍珠母 白芷 "
    "细辛 苍术 广藿香 佩兰 薏苡仁 芡实 莲子 白扁豆 鸡内金 六神曲 麦芽 山楂 莱菔子 益母草 泽兰 "
    "鸡血藤 延胡索 郁金 香附 乌药 青皮 佛手 玫瑰花 合欢皮 首乌藤 柏子仁 龙眼肉 大枣 女贞子 "
    "墨旱莲 菟丝子 淫羊藿 巴戟天 补骨脂 益智仁 覆盆子 金樱子 车前子 滑石 通草 茵陈 虎杖 "
    "金钱草 蒲公英 紫花地丁 野菊花 败酱草 白花蛇舌草 半枝莲 鱼腥草 芦根 天花粉 玄参 赤芍 紫草 "
    "水牛角 青蒿 地骨皮 银柴胡 胡黄连 秦艽 威灵仙 木瓜"
)

HERB_ORIGINS: Final[tuple[str, ...]] = _words("- - - - 川 云 怀 杭 宁夏 关")

HERB_PROCESSING: Final[tuple[str, ...]] = _words(
    "净制 切片 切段 炒 麸炒 蜜炙 酒炙 醋炙 盐炙 炒炭 生用 粉"
)

HOSPITAL_PREP_STEMS: Final[tuple[str, ...]] = _words(
    "复方黄连 止咳 清热解毒 复方薄荷 复方硼砂 呋喃西林 硼酸 复方樟脑 炉甘石 鱼石脂 氧化锌 "
    "水杨酸 复方鱼肝油 复方苯甲酸 利多卡因 维生素E 尿素"
)

HOSPITAL_PREP_FORMS: Final[tuple[tuple[str, str, str], ...]] = _triples(
    "合剂/合剂/liquid 滴耳液/滴耳剂/eye 软膏/软膏剂/cream 洗剂/洗剂/liquid 溶液/溶液剂/liquid "
    "乳膏/乳膏剂/cream"
)

# Medical services: imaging (part + modality + technique), laboratory tests, procedures.
BODY_PARTS: Final[tuple[str, ...]] = _words(
    "头颅 颈部 胸部 腹部 盆腔 腰椎 颈椎 胸椎 膝关节 肩关节 髋关节 踝关节 肘关节 腕关节 肝脏 "
    "胆囊 胰腺 肾脏 心脏 甲状腺 乳腺 前列腺 子宫附件 眼眶 鼻窦 内耳 颞颌关节 上腹部 下腹部 "
    "肺部 纵隔 冠状动脉 颅脑血管 下肢血管 上肢血管 脊髓 骶髂关节 跟骨 手部 足部"
)

MODALITIES: Final[tuple[str, ...]] = _words("CT 磁共振 X线摄影 彩色多普勒超声 DR摄影 B超")

TECHNIQUES: Final[tuple[str, ...]] = _words("平扫 增强扫描 平扫加增强 三维重建 血管成像 检查")

LAB_TESTS: Final[tuple[str, ...]] = _words(
    "血常规 尿常规 粪便常规 肝功能 肾功能 血糖 糖化血红蛋白 总胆固醇 甘油三酯 "
    "高密度脂蛋白胆固醇 低密度脂蛋白胆固醇 肌酐 尿素 尿酸 丙氨酸氨基转移酶 "
    "天门冬氨酸氨基转移酶 总胆红素 直接胆红素 白蛋白 总蛋白 乙型肝炎表面抗原 丙型肝炎抗体 "
    "C反应蛋白 降钙素原 肌钙蛋白I B型钠尿肽 D-二聚体 凝血酶原时间 活化部分凝血活酶时间 "
    "纤维蛋白原 血清钾 血清钠 血清氯 血清钙 血清铁 铁蛋白 叶酸 维生素B12 促甲状腺激素 "
    "游离甲状腺素 甲胎蛋白 癌胚抗原 前列腺特异性抗原 血型鉴定 红细胞沉降率 抗链球菌溶血素O "
    "类风湿因子 免疫球蛋白G 补体C3 淀粉酶"
)

LAB_METHODS: Final[tuple[str, ...]] = _words(
    "测定 测定(化学发光法) 测定(酶联免疫法) 测定(免疫比浊法) 测定(干化学法) 测定(速率法) "
    "检测(仪器法) 检测(手工法)"
)

PROCEDURES: Final[tuple[str, ...]] = _words(
    "静脉输液 肌肉注射 皮下注射 静脉注射 换药 清创缝合术 导尿 灌肠 吸氧 雾化吸入 心电图检查 "
    "动态心电图 脑电图 肺功能检查 胃镜检查 肠镜检查 支气管镜检查 阑尾切除术 胆囊切除术 "
    "疝修补术 甲状腺切除术 白内障摘除术 剖宫产术 关节镜检查 血液透析 腹膜透析 针刺 艾灸 "
    "推拿治疗 拔罐 中药熏洗 康复评定 运动疗法 Ⅰ级护理 Ⅱ级护理 特级护理 普通病房床位费 "
    "重症监护 院内会诊 普通门诊诊察费"
)

SERVICE_QUALIFIERS: Final[tuple[str, ...]] = _words("- - (床旁) (急诊) (术中) (儿童) (加收)")

SERVICE_SPECS: Final[tuple[str, ...]] = _words("- 次 每部位 每项 每人次 每小时 每日")

# Medical materials: prefixes, product nouns, type qualifiers.
MATERIAL_PREFIXES: Final[tuple[str, ...]] = _words("- 一次性使用 一次性使用无菌 医用 无菌")

MATERIAL_NOUNS: Final[tuple[str, ...]] = _words(
    "注射器 输液器 输血器 静脉留置针 采血针 真空采血管 导尿管 胃管 吸痰管 气管插管 "
    "中心静脉导管 引流管 引流袋 外科口罩 防护口罩 检查手套 外科手套 手术衣 纱布块 棉签 棉球 "
    "敷贴 透明敷料 弹性绷带 石膏绷带 可吸收缝合线 缝合针 皮肤吻合器 腔镜吻合器 止血夹 "
    "止血纱布 冠状动脉支架 球囊扩张导管 导引导丝 造影导管 人工晶状体 接骨板 髓内钉 椎弓根螺钉 "
    "人工髋关节假体 人工膝关节假体 血液透析器 透析管路 负压引流装置 造口袋 雾化器 氧气面罩 "
    "鼻氧管 输液接头 三通阀 麻醉面罩 喉罩 电极片 血糖试纸 胰岛素笔针头 压力延长管 动脉鞘管 "
    "骨水泥 补片 心脏起搏器"
)

MATERIAL_FEATURES: Final[tuple[str, ...]] = _words(
    "- - - 带针 螺口 自毁式 防针刺 钛合金 聚丙烯 硅橡胶 PVC 聚氨酯 高分子 可吸收 药物洗脱 抗反流"
)

SPECIMENS: Final[tuple[str, ...]] = _words("- - 血清 尿液 脑脊液 胸腹水")

MATERIAL_TYPES: Final[tuple[str, ...]] = _words(
    "- - - (普通型) (加强型) (儿童型) (抗菌型) (硅胶) (乳胶) (带囊)"
)

# Manufacturers: places, brand characters, trades, legal forms, and some real companies.
PROVINCES: Final[tuple[str, ...]] = _words(
    "北京 天津 上海 重庆 河北 山西 辽宁 吉林 黑龙江 江苏 浙江 安徽 福建 江西 山东 河南 湖北 "
    "湖南 广东 广西 海南 四川 贵州 云南 陕西 甘肃 青海 宁夏 新疆 内蒙古 深圳 广州 杭州 成都 "
    "武汉 西安 南京 哈尔滨 石家庄 长春 沈阳 济南 苏州 无锡 珠海 厦门"
)

BRAND_CHARS: Final[str] = "华康恒瑞达信泰安德百天福正新东方中科海立仁济生美普利欣宏源益星辰博远金鹏"

DRUG_TRADES: Final[tuple[str, ...]] = _words("制药 药业 医药 生物制药 制药厂 药业集团")

HERB_TRADES: Final[tuple[str, ...]] = _words("中药饮片 饮片 中药 药材")

MATERIAL_TRADES: Final[tuple[str, ...]] = _words("医疗器械 医疗用品 医用材料 生物医学工程 医疗科技")

LEGAL_FORMS: Final[tuple[str, ...]] = _words(
    "有限公司 有限公司 股份有限公司 有限责任公司 集团有限公司 集团股份有限公司"
)

REAL_DRUG_MAKERS: Final[tuple[str, ...]] = _words(
    "华北制药股份有限公司 石药集团欧意药业有限公司 扬子江药业集团有限公司 齐鲁制药有限公司 "
    "江苏恒瑞医药股份有限公司 浙江华海药业股份有限公司 哈药集团制药总厂 "
    "修正药业集团股份有限公司 华润双鹤药业股份有限公司 上海信谊药厂有限公司 "
    "广州白云山医药集团股份有限公司 天津天士力医药集团股份有限公司 云南白药集团股份有限公司 "
    "北京同仁堂股份有限公司 辉瑞制药有限公司 拜耳医药保健有限公司 阿斯利康制药有限公司 "
    "深圳信立泰药业股份有限公司 石家庄以岭药业股份有限公司 太极集团重庆涪陵制药厂有限公司"
)

HOSPITALS: Final[tuple[str, ...]] = _words(
    "市第一人民医院 市中医医院 省人民医院 市妇幼保健院 医科大学附属医院 市中心医院"
)
